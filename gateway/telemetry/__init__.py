"""What the gateway tells its operators: metrics (``metrics``), a log line per request
(``logs``) and traces (``traces``).

They all learn of a call the same way: when its ledger row is built, ``Call.record`` hands the
call and its row to every ``CallObserver`` of the runtime (``Runtime.observers``). The call
carries what a row does not: each upstream attempt with its timing (``Attempt``), when the answer
started, how long the upstream took, and the error that ended it (``call.error``: a refusal
is told apart from an upstream's 429 there). Observers run on the request path, once per call:
they must be cheap, and must not raise (one that does is logged and the call goes on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.calls.pipeline import Call
    from providers.errors import GatewayError
    from providers.factory import Route


@dataclass(frozen=True, slots=True)
class Attempt:
    """One upstream attempt of a call: where it went, when (``time.perf_counter``), and the
    error that ended it (None: the answer started)."""

    route: Route
    started: float
    ended: float
    error: GatewayError | None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class CallObserver(Protocol):
    def call_finished(self, call: Call, row: dict[str, Any]) -> None:
        """``row`` is the call's ledger row (also built for a call that keeps none, such as a
        token count: ``call.keeps_row`` says which)."""
