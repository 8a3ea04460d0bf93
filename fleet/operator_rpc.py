"""The controller's gate for requests that change the fleet.

``OperatorGate.run`` verifies a signed request (``fleet.operators.verify_request``), spends
its nonce in the store, runs the handler, and records the outcome: refusals are counted by
reason (``refused``), logged once each as ``controller.operator_refused`` with
``rejection="unauthorized"``, and written to the store's bounded ``operator_log`` with the
accepted and failed requests. It runs on the controller's single store thread, so checking a
nonce and recording it cannot interleave with another request carrying the same nonce.
What a verified request does is a use case of ``fleet.app``, run by ``fleet.rpc_server``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import structlog

from edge_contract.controller import JsonObject, SignedReply
from edge_contract.errors import PayloadError
from fleet.errors import FleetError, OperatorRefusedError
from fleet.operators import Verified, verify_request
from fleet.store import FleetStore

log = structlog.get_logger("fleet.service")

# A use case's reply and the messages (topic, payload) it hands the front end to publish.
Outcome = tuple[SignedReply, list[tuple[str, bytes]]]
# A request that changes anything: run only once ``verify_request`` accepted its signature.
SignedRpc = Callable[[Verified], Outcome]


class _StoredNonces:
    """The store's spent nonces as the ``Container`` that ``verify_request`` checks."""

    def __init__(self, store: FleetStore) -> None:
        self._store = store

    def __contains__(self, nonce: object) -> bool:
        return isinstance(nonce, str) and self._store.nonce_used(nonce)


class OperatorGate:
    """Signature, time window and nonce checks in front of every mutating RPC."""

    def __init__(self, store: FleetStore, *, window_s: float, clock: Callable[[], float]) -> None:
        self._store = store
        self._window_s = window_s
        self._clock = clock
        self.refused: Counter[str] = Counter()  # by reason: unsigned, replayed, ...

    def run(self, method: str, request: JsonObject, handler: SignedRpc) -> Outcome:
        """Verify, then run ``handler``; the reply names the operator.

        Raises:
            OperatorRefusedError: the request is not validly signed, fresh and new.
            FleetError, PayloadError: the handler refused it (recorded as failed).
        """
        verified = self._authorize(method, request)
        try:
            reply, messages = handler(verified)
        except (FleetError, PayloadError) as exc:
            self._audit(verified.operator, method, "failed", str(exc))
            raise
        self._audit(verified.operator, method, "ok", "")
        log.info("controller.operator_request", operator=verified.operator, method=method)
        return reply.model_copy(update={"operator": verified.operator}), messages

    def _authorize(self, method: str, request: JsonObject) -> Verified:
        now = self._clock()
        try:
            verified = verify_request(
                request,
                method=method,
                trusted=self._store.trusted_keys(),
                now=now,
                window_s=self._window_s,
                seen_nonces=_StoredNonces(self._store),
            )
            # Remembered until a request with this timestamp would be refused as expired.
            expires = verified.ts + self._window_s + 1
            if not self._store.remember_nonce(verified.nonce, expires=expires, now=now):
                raise OperatorRefusedError("replayed", f"nonce {verified.nonce} was already used")
        except OperatorRefusedError as exc:
            self.refused[exc.reason] += 1
            log.warning(
                "controller.operator_refused",
                rejection="unauthorized",
                reason=exc.reason,
                method=method,
                detail=exc.detail,
            )
            self._audit(None, method, f"refused:{exc.reason}", exc.detail)
            raise
        return verified

    def _audit(self, operator: str | None, method: str, outcome: str, detail: str) -> None:
        self._store.log_request(
            operator=operator, method=method, outcome=outcome, detail=detail, now=self._clock()
        )
