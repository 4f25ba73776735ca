"""The policy's routes: read and change a model's champion, shadow and canary (admin key),
promote and roll back (admin key), and the comparison of champion and challengers (scoring
key). Each change is written to the model's policy.json and takes effect for new requests in
one assignment (server/traffic.py)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.auth import HEADER, ApiKeyGuard
from server.endpoints import JSONResponse, ServerState
from server.errors import InvalidApiKey, MissingApiKey, NotFound, ServingError
from server.payloads import shown
from server.policy import MAX_POLICY_BYTES, Policy, PolicyConflict, PolicyError, parse_bytes
from server.traffic import TrafficManager
from server.v2 import log_admin


class PolicyRoutes:
    def __init__(
        self,
        state: ServerState,
        guard: ApiKeyGuard,
        admin_guard: ApiKeyGuard | None,
        managers: dict[str, TrafficManager],
    ) -> None:
        self.state = state
        self.guard = guard
        self.admin_guard = admin_guard
        self.managers = managers

    def routes(self) -> list[Route]:
        model = "/v1/models/{name}"
        return [
            # One route for the three methods, so that a 405 names them all in Allow.
            Route(model + "/policy", self.policy, methods=["GET", "PUT", "DELETE"]),
            Route(model + "/promote", self.promote, methods=["POST"]),
            Route(model + "/rollback", self.rollback, methods=["POST"]),
            Route(model + "/comparison", self.comparison, methods=["GET"]),
        ]

    def manager(self, name: str) -> TrafficManager:
        manager = self.managers.get(name)
        if manager is None:
            self.state.ready_snapshot(name)  # 404 naming the served models, or 503
            raise NotFound(f"model {shown(name)} has no repository, so no policy")
        return manager

    def admin(self, request: Request) -> str:
        presented = request.headers.get(HEADER)
        if self.admin_guard is None:
            if not presented:
                raise MissingApiKey()
            raise InvalidApiKey("the policy routes are off: no admin key is configured")
        return self.admin_guard.check(presented)

    async def comparison(self, request: Request) -> Response:
        self.guard.check(request.headers.get(HEADER))
        return JSONResponse(self.manager(request.path_params["name"]).figures())

    async def policy(self, request: Request) -> Response:
        if request.method == "PUT":
            return await self.replace(request)
        if request.method == "DELETE":
            return await self.remove(request)
        return await self.read(request)

    async def read(self, request: Request) -> Response:
        self.admin(request)
        manager = self.manager(request.path_params["name"])
        policy_of(manager)
        return JSONResponse(state_of(manager))

    async def replace(self, request: Request) -> Response:
        async def change(manager: TrafficManager) -> Policy | None:
            body = await request.body()
            if len(body) > MAX_POLICY_BYTES:
                raise PolicyError(f"a policy is at most {MAX_POLICY_BYTES} bytes")
            return parse_bytes(body)

        return await self.changed(request, "set policy", change)

    async def remove(self, request: Request) -> Response:
        async def change(manager: TrafficManager) -> Policy | None:
            policy_of(manager)
            return None

        return await self.changed(request, "remove policy", change)

    async def promote(self, request: Request) -> Response:
        async def change(manager: TrafficManager) -> Policy | None:
            return current(manager).promoted()

        return await self.changed(request, "promote", change)

    async def rollback(self, request: Request) -> Response:
        async def change(manager: TrafficManager) -> Policy | None:
            policy = current(manager)
            if policy.canary is not None or policy.shadow is not None:
                return Policy(policy.champion, guard=policy.guard, previous=policy.previous)
            if policy.previous is None:
                raise PolicyConflict("nothing to roll back: no canary, no shadow, no previous")
            return Policy(policy.previous, guard=policy.guard)

        return await self.changed(request, "roll back", change)

    async def changed(self, request: Request, action: str, change: Any) -> Response:
        """Apply an admin's change; logged with the admin key's name, whatever the outcome."""
        admin = self.admin(request)
        name = request.path_params["name"]
        status, outcome = 500, "failed unexpectedly"
        try:
            try:
                manager = self.manager(name)
                policy = await change(manager)
                if policy is not None:
                    await self.load_named(name, manager, policy)
                manager.set_policy(policy, f"{action} by admin key {admin}")
            except ServingError as error:
                status, outcome = error.status_code, error.message
                raise
            status, outcome = 200, f"champion {manager.figures()['champion']}"
            return JSONResponse(state_of(manager))
        finally:
            model = name if name in self.managers else shown(name)
            log_admin(admin, action, model, status, outcome)

    async def load_named(self, name: str, manager: TrafficManager, policy: Policy) -> None:
        """Load the versions on disk that the policy names and FRAUD_MAX_VERSIONS left out,
        so that the change applies now; one not on disk stays a 409 from set_policy."""
        served = set(manager.raw.services) if manager.raw is not None else set()
        repository = self.state.repositories.get(name)
        if repository is None or policy.versions() <= served:
            return
        manager.loading = frozenset(policy.versions())
        try:
            await repository.refresh()
        finally:
            manager.loading = frozenset()


def policy_of(manager: TrafficManager) -> Policy:
    """The model's policy, or a 404: without one the newest version answers."""
    if manager.policy is None:
        newest = manager.raw.latest.info.version if manager.raw is not None else "none yet"
        raise NotFound(
            f"model {manager.name!r} has no policy: its newest version ({newest}) answers"
        )
    return manager.policy


def current(manager: TrafficManager) -> Policy:
    """The policy in force, or one of the version answering now as champion."""
    if manager.policy is not None:
        return manager.policy
    if manager.raw is None:
        raise PolicyConflict("the model is not loaded yet")
    return Policy(manager.raw.latest.info.version)


def state_of(manager: TrafficManager) -> dict[str, Any]:
    figures = manager.figures()
    return {key: figures[key] for key in ("model", "policy", "applied", "error", "champion")}
