"""The console's pages. Every page states who may open it: a tenant page
checks that the signed-in key belongs to the tenant in its URL, an operator
page that the session holds the operator token, so typing another tenant's
URL or an operator URL answers 403 whatever the link."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import grpc
from fastapi import Depends, FastAPI, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from google.rpc import error_details_pb2
from markupsafe import Markup

from gateway.refusals import (
    DEFAULT_AUTH_FAILURE_BURST,
    DEFAULT_AUTH_FAILURES_PER_S,
    RefusalBudget,
)
from maas.v1 import billing_pb2, generation_pb2
from services.common.errors import ResourceExhaustedError, error_from_rpc, status_detail
from services.common.usage_terms import billed_name
from services.console import money, sse, views
from services.console.forms import (
    BUDGET_FIELDS,
    PRICE_FIELDS,
    BudgetForm,
    FormError,
    PlaygroundForm,
    PriceForm,
    key_expiry,
)
from services.console.mesh_client import MeshClient
from services.console.sessions import Role, Session, Sessions

HERE = Path(__file__).parent
COOKIE = "maas_console_session"
CSRF_HEADER = "x-csrf-token"
# gRPC statuses a page shows as they are, with the HTTP status a browser understands.
HTTP_STATUS = {
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class NotSignedIn(Exception):
    pass


def session_of(request: Request) -> Session | None:
    sessions: Sessions = request.app.state.sessions
    return sessions.get(request.cookies.get(COOKIE))


# Who may open what: dependencies of every page.


async def signed_in(request: Request) -> Session:
    session = session_of(request)
    if session is None:
        raise NotSignedIn
    sessions: Sessions = request.app.state.sessions
    if sessions.needs_check(session):
        mesh: MeshClient = request.app.state.mesh
        if not await still_good(mesh, session):
            sessions.close(session.session_id)
            raise NotSignedIn
        sessions.checked(session)
    return session


async def still_good(mesh: MeshClient, session: Session) -> bool:
    """Whether the session's credential still works (not revoked or expired,
    the operator token not replaced)."""
    try:
        if session.role is Role.TENANT:
            await mesh.authenticate(session.credential)
        else:
            await mesh.tenants(session.credential)
    except grpc.aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return False
        raise
    return True


def own_tenant(tenant_id: str, session: Annotated[Session, Depends(signed_in)]) -> Session:
    if session.role is not Role.TENANT or session.tenant_id != tenant_id:
        raise HTTPException(403, "this page belongs to another tenant")
    return session


def operator(session: Annotated[Session, Depends(signed_in)]) -> Session:
    if session.role is not Role.OPERATOR:
        raise HTTPException(403, "operator pages need the operator token")
    return session


async def csrf(request: Request, session: Annotated[Session, Depends(signed_in)]) -> None:
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        given = str((await request.form()).get("csrf", "")) or None
    if not session.csrf_ok(given):
        raise HTTPException(403, "the form is stale or came from another site; reload the page")


Tenant = Annotated[Session, Depends(own_tenant)]
Operator = Annotated[Session, Depends(operator)]
Csrf = Depends(csrf)


def create_app(
    mesh: MeshClient,
    sessions: Sessions,
    *,
    secure_cookie: bool,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        response = templates.TemplateResponse(
            request, name, {"session": session_of(request), **context}, status_code=status
        )
        # Pages show keys (once), usage and alerts: never kept by a cache.
        response.headers["cache-control"] = "no-store"
        return response

    app.state.sessions = sessions
    app.state.mesh = mesh
    # Failed sign-ins an address may cost auth: gateway/refusals.py's budget
    # for failed authentications, so the console is no faster a way to guess keys.
    failed_sign_ins = RefusalBudget(
        per_s=DEFAULT_AUTH_FAILURES_PER_S,
        burst=DEFAULT_AUTH_FAILURE_BURST,
        subject="failed_sign_ins",
    )

    @app.middleware("http")
    async def same_origin_posts(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # A POST from another site's page carries its own Origin: refused
        # before any cookie (SameSite=Strict keeps it off anyway) or form is read.
        origin = request.headers.get("origin")
        cross_site = origin is not None and urlsplit(origin).netloc != request.headers.get("host")
        if request.method == "POST" and cross_site:
            return HTMLResponse("cross-site request refused", status_code=403)
        return await call_next(request)

    @app.exception_handler(NotSignedIn)
    async def to_sign_in(request: Request, _: NotSignedIn) -> Response:
        if request.headers.get("hx-request") or request.url.path.endswith("/stream"):
            return HTMLResponse("signed out", status_code=401)
        return RedirectResponse("/signin", status_code=303)

    @app.exception_handler(HTTPException)
    async def refused(request: Request, err: HTTPException) -> Response:
        return page(request, "error.html", err.status_code, message=err.detail)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def mesh_refused(request: Request, err: grpc.aio.AioRpcError) -> Response:
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            # The key was revoked or expired under the session: it is over.
            sessions.close(request.cookies.get(COOKIE))
        return page(
            request,
            "error.html",
            HTTP_STATUS.get(err.code(), 502),
            message=f"{err.code().name}: {err.details()}",
        )

    # Signing in and out.

    @app.get("/")
    async def home(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return RedirectResponse("/signin", status_code=303)
        if session.role is Role.OPERATOR:
            return RedirectResponse("/operator/tenants", status_code=303)
        return RedirectResponse(f"/t/{session.tenant_id}/models", status_code=303)

    @app.get("/signin")
    async def sign_in_page(request: Request) -> Response:
        return page(request, "signin.html")

    @app.post("/signin")
    async def sign_in(request: Request, credential: Annotated[str, Form()]) -> Response:
        address = request.client.host if request.client else ""
        try:
            failed_sign_ins.check(address)
        except ResourceExhaustedError as err:
            refusal = page(request, "signin.html", 429, error=f"{err}; try again later")
            refusal.headers["retry-after"] = str(math.ceil(err.retry_after_s))
            return refusal
        # A new sign-in ends the session this browser had, whoever it was.
        sessions.close(request.cookies.get(COOKIE))
        session = await _open_session(credential.strip())
        if session is None:
            failed_sign_ins.refused(address)
            return page(
                request,
                "signin.html",
                401,
                error="not a valid API key or operator token",
            )
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            session.session_id,
            httponly=True,
            samesite="strict",
            secure=secure_cookie,
            path="/",
        )
        return response

    async def _open_session(credential: str) -> Session | None:
        if not credential:
            return None
        try:
            principal = await mesh.authenticate(credential)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
        else:
            return sessions.open(
                Role.TENANT,
                credential,
                tenant_id=principal.tenant_id,
                key_id=principal.key_id,
                scopes=tuple(principal.scopes),
            )
        # Not an API key: the operator token is the credential that may list every tenant.
        try:
            await mesh.tenants(credential)
        except grpc.aio.AioRpcError as err:
            if err.code() not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ):
                raise
            return None
        return sessions.open(Role.OPERATOR, credential)

    @app.post("/signout", dependencies=[Csrf])
    async def sign_out(request: Request) -> Response:
        sessions.close(request.cookies.get(COOKIE))
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # Tenant pages.

    @app.get("/t/{tenant_id}/models")
    async def models(request: Request, session: Tenant) -> Response:
        listed = await mesh.models(session.credential)
        prices = {billed_name(p): money.price_row(p) for p in await mesh.prices(session.credential)}
        return page(request, "models.html", models=listed, prices=prices, unpriced=money.UNPRICED)

    @app.get("/t/{tenant_id}/playground")
    async def playground(request: Request, session: Tenant) -> Response:
        listed = await mesh.models(session.credential)
        return page(request, "playground.html", models=listed)

    @app.post("/t/{tenant_id}/playground/runs", dependencies=[Csrf])
    async def submit_run(
        request: Request,
        session: Tenant,
        model: Annotated[str, Form()] = "",
        prompt: Annotated[str, Form()] = "",
        system: Annotated[str, Form()] = "",
        temperature: Annotated[str, Form()] = "",
        max_tokens: Annotated[str, Form()] = "",
        stop: Annotated[str, Form()] = "",
        seed: Annotated[str, Form()] = "",
    ) -> Response:
        form = PlaygroundForm(model, prompt, system, temperature, max_tokens, stop, seed)
        try:
            generate = form.request()
        except FormError as err:
            return page(request, "run_error.html", 200, message=str(err))
        run_id = sessions.add_run(session, generate)
        run_url = f"/t/{session.tenant_id}/playground/runs/{run_id}/stream"
        return page(request, "run.html", run_url=run_url)

    @app.get("/t/{tenant_id}/playground/runs/{run_id}/stream")
    async def stream_run(run_id: str, session: Tenant) -> Response:
        generate = session.runs.pop(run_id, None)
        if generate is None:
            raise HTTPException(404, "no such run: submit the form again")
        return StreamingResponse(
            _run_events(session.credential, generate),
            media_type="text/event-stream",
            headers={"cache-control": "no-store"},
        )

    async def _run_events(
        api_key: str, generate: generation_pb2.GenerateRequest
    ) -> AsyncIterator[str]:
        yield sse.OPENING
        usage = generation_pb2.Usage()
        finish = "unfinished"
        call = mesh.generate(api_key, generate)
        try:
            async for chunk in call:
                if chunk.text:
                    yield sse.text_event("token", chunk.text)
                usage = chunk.usage
                if chunk.finish_reason:
                    finish = generation_pb2.FinishReason.Name(chunk.finish_reason)
        except grpc.aio.AioRpcError as err:
            # Billed for what it produced before it failed: its cost is shown too.
            cost = await _call_cost(api_key, generate.model, usage)
            yield sse.event(
                "done",
                templates.get_template("run_done.html").render(
                    error=f"{err.code().name}: {err.details()}",
                    usage=usage,
                    finish=finish,
                    cost=cost,
                ),
            )
            return
        finally:
            # The page went away mid-stream: the generation stops at every hop
            # (and is billed for what it produced), not left running.
            call.cancel()
        cost = await _call_cost(api_key, generate.model, usage)
        yield sse.event(
            "done",
            templates.get_template("run_done.html").render(
                error="",
                usage=usage,
                finish=finish.removeprefix("FINISH_REASON_").lower(),
                cost=cost,
            ),
        )

    async def _call_cost(api_key: str, model: str, usage: generation_pb2.Usage) -> dict[str, str]:
        """The call's cost at the price in force as it ended (the ledger
        bills its record at the version in force at its end time)."""
        ended = now()
        try:
            versions = await mesh.prices(api_key, model, history=True)
        except grpc.aio.AioRpcError as err:
            return {"text": f"unknown ({err.code().name}: {err.details()})", "micros": ""}
        price = money.price_at(versions, ended)
        if price is None:
            return {"text": f"{money.UNPRICED}: no price in force for {model}", "micros": ""}
        cost = money.call_cost(usage, price)
        return {"text": money.amount_text(cost, price.currency), "micros": str(cost)}

    @app.get("/t/{tenant_id}/keys")
    async def keys(request: Request, session: Tenant) -> Response:
        return await _keys_page(request, session)

    async def _keys_page(
        request: Request,
        session: Session,
        status: int = 200,
        *,
        created: dict[str, object] | None = None,
        error: str = "",
    ) -> Response:
        listed = []
        if session.is_tenant_admin:
            held = await mesh.keys(session.credential, session.tenant_id)
            listed = [views.key_row(k) for k in held]
        return page(request, "keys.html", status, keys=listed, created=created, error=error)

    @app.post("/t/{tenant_id}/keys", dependencies=[Csrf])
    async def create_key(
        request: Request,
        session: Tenant,
        name: Annotated[str, Form()] = "",
        expires: Annotated[str, Form()] = "",
    ) -> Response:
        if not session.is_tenant_admin:
            raise HTTPException(403, "managing keys needs a key with the admin scope")
        try:
            expiry = key_expiry(expires, now())
        except FormError as err:
            return await _keys_page(request, session, 400, error=str(err))
        made = await mesh.create_key(session.credential, session.tenant_id, name.strip(), expiry)
        # Rendered in this response only: the secret is never stored or shown again.
        created = {"api_key": made.api_key, **views.key_row(made.key)}
        return await _keys_page(request, session, created=created)

    @app.post("/t/{tenant_id}/keys/{key_id}/revoke", dependencies=[Csrf])
    async def revoke_key(key_id: str, session: Tenant) -> Response:
        if not session.is_tenant_admin:
            raise HTTPException(403, "managing keys needs a key with the admin scope")
        await mesh.revoke_key(session.credential, key_id)
        return RedirectResponse(f"/t/{session.tenant_id}/keys", status_code=303)

    @app.get("/t/{tenant_id}/usage")
    async def usage(request: Request, session: Tenant, by: str = "hour") -> Response:
        span = views.SPANS.get(by)
        if span is None:
            raise HTTPException(404, f"usage by {by!r}: by hour or by day")
        start = views.span_start(span, now())
        response = await mesh.usage(session.credential, start, span.grouping)
        chart = views.usage_chart(span, start, response)
        spend = views.spend_chart(span, start, response)
        return page(
            request,
            "usage.html",
            by=by,
            summary=response.summary,
            spend=money.amount_text(response.summary.cost_micros, response.summary.currency),
            unpriced_models=list(response.summary.unpriced_models),
            chart_json=_script_json(chart),
            spend_json=_script_json(spend),
        )

    def _script_json(data: object) -> Markup:
        # Inside <script>: "<" escaped so no value can close the element.
        return Markup(json.dumps(data).replace("<", "\\u003c"))

    @app.get("/t/{tenant_id}/budgets")
    async def tenant_budgets(request: Request, session: Tenant) -> Response:
        listed = []
        if session.is_tenant_admin:
            currency = await _currency(session.credential)
            held = await mesh.budgets(session.credential, session.tenant_id)
            listed = [views.budget_row(b, currency) for b in held]
        return page(request, "budgets.html", budgets=listed, show_tenant=False)

    async def _currency(credential: str) -> str:
        """The price book's one currency, which budgets are in; "" before any price."""
        book = await mesh.prices(credential)
        return book[0].currency if book else ""

    @app.get("/t/{tenant_id}/alerts")
    async def tenant_alerts(request: Request, session: Tenant) -> Response:
        listed = [views.alert_row(a) for a in await mesh.alerts(session.tenant_id)]
        return page(
            request,
            "alerts.html",
            alerts=listed,
            stream_url=f"/t/{session.tenant_id}/alerts/stream",
        )

    @app.get("/t/{tenant_id}/alerts/stream")
    async def tenant_alert_stream(session: Tenant) -> Response:
        return _alert_stream(session.tenant_id)

    # Operator pages.

    @app.get("/operator/tenants")
    async def tenants(request: Request, session: Operator) -> Response:
        listed = [views.tenant_row(t) for t in await mesh.tenants(session.credential)]
        return page(request, "tenants.html", tenants=listed)

    @app.get("/operator/prices")
    async def prices(request: Request, session: Operator) -> Response:
        return await _prices_page(request, session)

    async def _prices_page(
        request: Request,
        session: Session,
        status: int = 200,
        *,
        error: FormError | None = None,
        typed: dict[str, str] | None = None,
        saved: billing_pb2.Price | None = None,
    ) -> Response:
        current = [money.price_row(p) for p in await mesh.prices(session.credential)]
        history = [money.price_row(p) for p in await mesh.prices(session.credential, history=True)]
        return page(
            request,
            "prices.html",
            status,
            current=current,
            history=history,
            error=error,
            typed=typed or {},
            saved=money.price_row(saved) if saved is not None else None,
        )

    @app.post("/operator/prices", dependencies=[Csrf])
    async def set_price(
        request: Request,
        session: Operator,
        model: Annotated[str, Form()] = "",
        adapter: Annotated[str, Form()] = "",
        currency: Annotated[str, Form()] = "",
        prompt: Annotated[str, Form()] = "",
        cached_prompt: Annotated[str, Form()] = "",
        completion: Annotated[str, Form()] = "",
        effective: Annotated[str, Form()] = "",
        backdate: Annotated[str, Form()] = "",
    ) -> Response:
        form = PriceForm(model, adapter, currency, prompt, cached_prompt, completion, effective)
        # What was typed comes back in the form when it is refused.
        typed = {k: v for k, v in vars(form).items() if isinstance(v, str)}
        try:
            saved = await mesh.set_price(session.credential, form.price(), backdate=bool(backdate))
        except FormError as err:
            return await _prices_page(request, session, 400, error=err, typed=typed)
        except grpc.aio.AioRpcError as err:
            refusal = _price_refusal(err)
            if refusal is None:
                raise
            return await _prices_page(request, session, 400, error=refusal, typed=typed)
        return await _prices_page(request, session, saved=saved)

    def _price_refusal(err: grpc.aio.AioRpcError) -> FormError | None:
        """Auth's refusal of a price as the form's field it names."""
        if err.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS):
            return None
        status = error_from_rpc(err).status_proto()
        bad = status_detail(status, error_details_pb2.BadRequest)
        if bad is None or not bad.field_violations:
            # ALREADY_EXISTS: a version of that name at that very time.
            return FormError("effective", err.details() or err.code().name)
        violation = bad.field_violations[0]
        return FormError(PRICE_FIELDS.get(violation.field, violation.field), violation.description)

    @app.get("/operator/budgets")
    async def operator_budgets(request: Request, session: Operator, tenant: str = "") -> Response:
        return await _budgets_page(request, session, tenant.strip())

    async def _budgets_page(
        request: Request,
        session: Session,
        tenant: str,
        status: int = 200,
        *,
        error: FormError | None = None,
        typed: dict[str, str] | None = None,
        saved: billing_pb2.Budget | None = None,
    ) -> Response:
        currency = await _currency(session.credential)
        try:
            held = await mesh.budgets(session.credential, tenant)
        except grpc.aio.AioRpcError as err:
            # A mistyped tenant id in the list's own form: said beside it, the page stays.
            if err.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                raise
            held = []
            error = error or FormError("list", err.details() or err.code().name)
        return page(
            request,
            "operator_budgets.html",
            status,
            budgets=[views.budget_row(b, currency) for b in held],
            show_tenant=True,
            tenant=tenant,
            currency=currency,
            error=error,
            typed=typed or {},
            saved=views.budget_row(saved, currency) if saved is not None else None,
        )

    @app.post("/operator/budgets", dependencies=[Csrf])
    async def set_budget(
        request: Request,
        session: Operator,
        tenant: Annotated[str, Form()] = "",
        key: Annotated[str, Form()] = "",
        monthly: Annotated[str, Form()] = "",
        total: Annotated[str, Form()] = "",
        soft: Annotated[str, Form()] = "",
    ) -> Response:
        form = BudgetForm(tenant, key, monthly, total, soft)
        typed = {k: v for k, v in vars(form).items() if isinstance(v, str)}
        # The list below the form shows the tenant just set (or tried).
        shown = form.tenant.strip()
        try:
            saved = await mesh.set_budget(session.credential, form.budget())
        except FormError as err:
            return await _budgets_page(request, session, shown, 400, error=err, typed=typed)
        except grpc.aio.AioRpcError as err:
            refusal = _budget_refusal(err, form)
            if refusal is None:
                raise
            return await _budgets_page(request, session, shown, 400, error=refusal, typed=typed)
        return await _budgets_page(request, session, saved.tenant_id, saved=saved)

    def _budget_refusal(err: grpc.aio.AioRpcError, form: BudgetForm) -> FormError | None:
        """Auth's refusal of a budget as the form's field it names."""
        if err.code() == grpc.StatusCode.NOT_FOUND:
            # No such tenant, or no such key of it: auth says which.
            field = "key" if form.key.strip() and "API key" in (err.details() or "") else "tenant"
            return FormError(field, err.details() or "not found")
        if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
            return None
        bad = status_detail(error_from_rpc(err).status_proto(), error_details_pb2.BadRequest)
        if bad is None or not bad.field_violations:
            return FormError("tenant", err.details() or err.code().name)
        violation = bad.field_violations[0]
        return FormError(BUDGET_FIELDS.get(violation.field, violation.field), violation.description)

    @app.get("/operator/replicas")
    async def replicas(request: Request, session: Operator) -> Response:
        listed = [views.replica_row(r) for r in await mesh.replicas()]
        return page(request, "replicas.html", replicas=listed)

    @app.get("/operator/queues")
    async def queues(request: Request, session: Operator) -> Response:
        stats = await mesh.queues()
        return page(
            request,
            "queues.html",
            waiting=stats.waiting,
            depths=views.queue_rows(stats),
            shed=dict(stats.shed),
        )

    @app.get("/operator/alerts")
    async def all_alerts(request: Request, session: Operator) -> Response:
        listed = [views.alert_row(a) for a in await mesh.alerts()]
        return page(request, "alerts.html", alerts=listed, stream_url="/operator/alerts/stream")

    @app.get("/operator/alerts/stream")
    async def all_alert_stream(session: Operator) -> Response:
        return _alert_stream("")

    def _alert_stream(tenant_id: str) -> Response:
        row = templates.get_template("alert_row.html")

        async def events() -> AsyncIterator[str]:
            yield sse.OPENING
            call = mesh.watch_alerts(tenant_id)
            try:
                # Watching before listing: an alert raised between the two is
                # in the list, or comes as an update of a row the page has.
                shown = {alert.alert_id for alert in await mesh.alerts(tenant_id)}
                async for alert in call:
                    # A new alert is a new row; an update of one replaces its row.
                    update = alert.alert_id in shown
                    shown.add(alert.alert_id)
                    html = row.render(alert=views.alert_row(alert), update=update)
                    yield sse.event("alert", html)
            finally:
                call.cancel()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-store"}
        )

    return app
