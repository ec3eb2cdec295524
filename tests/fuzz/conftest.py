"""Fuzzing the mesh's two public faces against a real mesh (real engine,
real auth, the HTTP face): the e2e mesh and tenants, shared with this folder,
and the hostile suite's well-behaved bystander tenant, which runs beside
every fuzz run and must come out whole."""

from __future__ import annotations

from tests.e2e import conftest as e2e
from tests.e2e.conftest import Mesh, TenantFactory, TenantKey, set_plan
from tests.hostile.conftest import bystander

mesh = e2e.mesh
new_tenant = e2e.new_tenant
__all__ = ["Mesh", "TenantFactory", "TenantKey", "bystander", "mesh", "new_tenant", "set_plan"]
