"""Fuzzing the mesh's two public faces against a real mesh (real engine,
real auth, the HTTP face): the session's mesh (tests/mesh.py), and the
hostile suite's well-behaved bystander tenant, which runs beside every fuzz
run and must come out whole."""

from __future__ import annotations

from tests.hostile.conftest import bystander
from tests.mesh import Mesh, TenantFactory, TenantKey, set_plan

__all__ = ["Mesh", "TenantFactory", "TenantKey", "bystander", "set_plan"]
