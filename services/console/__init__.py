"""The web console: a browser face on the mesh for people who do not program.

Its own small service, not a page of the gateway's HTTP face, because:
- the gateway is the token path; a console's page renders, sessions and
  chart data would share its event loop and CPU with every stream it serves,
  and a console bug (or a template) would ship with every gateway;
- it is a client of the mesh like any other: it calls the gateway with the
  signed-in user's API key (models, generation, usage), and auth, the router
  and anomaly over the mesh's channels (service token / mutual TLS) for
  keys, tenants, replicas, queues and alerts. Auth still decides every admin
  rpc on the user's own credential; the console only adds the page rules
  (a tenant sees its own pages, never another's or the operator's);
- it scales and restarts on its own: sessions live in its memory, so a
  restart signs people out and loses nothing else.

It is in services/catalog.py's HTTP_SERVICES, not SERVICES: those are the
gRPC services (health by the gRPC protocol, a mesh certificate each) that
`make run` and the in-process mesh start; the console serves HTTP only.
The deploy checks hold it to the same rules, with a GET of its sign-in page
as its readiness (spec.py); deploy/local/stack.py starts it after the mesh
and waits for that page.

Server-rendered: FastAPI + Jinja2 templates, htmx (and its SSE extension for
the playground's stream and live alerts), Chart.js for charts; every asset is
vendored under static/vendor (versions and licenses in its README)."""
