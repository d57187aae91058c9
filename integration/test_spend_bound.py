"""How far spend can pass a cap (issue #12): 50 concurrent metered requests against a $0.01 key
cap, through the Envoy `keyward render envoy` configures, with the real control plane and a
provider that reports usage consistent with each request (`realistic_upstream.py`).

docs/configuration.md ("How far spend can pass a cap") states the bound this test checks:

    spend ≤ cap + Σ max(0, cost_i − reservation_i)

over the requests admitted against the budget, where reservation_i =
min(ceiling, price(⌈body bytes / bytes_per_token⌉, largest output limit × choices)) and cost_i is
what request i really cost (the provider's usage, priced). Four runs: conflicting output limits,
`n: 128`, a client that accepts gzip, and a provider that compresses whatever it is asked.
Each run also computes what a keyward that reserved less (the smaller limit, no `n`) or charged
nothing for an unreadable answer would have let through, and checks that this test would have
caught it.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

import bypass_cases as C
import harness
from raw_clients import Answer, send_h1
from realistic_upstream import request_limits

DOC = harness.REPO_ROOT / "docs" / "configuration.md"
FORMULA = "spend ≤ cap + Σ max(0, cost_i − reservation_i)"
CAP = 10_000  # $0.01
CONCURRENT = 50


def body(**fields) -> bytes:
    doc = {"model": C.MODEL_OK, "messages": [{"role": "user", "content": "count to ten"}]}
    doc.update(fields)
    return json.dumps(doc).encode()


# run -> (body, client headers, provider mode, the output limit an unfixed keyward reserved)
RUNS = {
    "conflicting_max_fields": (body(max_completion_tokens=1, max_tokens=4000), (), "", 1),
    "n_128": (body(max_tokens=20, n=128), (), "", 20),
    "client_accepts_gzip": (body(max_tokens=4000), (("accept-encoding", "gzip"),), "", 4000),
    "provider_always_gzip": (body(max_tokens=4000), (), "gzip", 4000),
}


def spend_bound(cap: int, reservations: list[int], costs: list[int]) -> int:
    """The documented bound: cap + Σ max(0, cost_i − reservation_i) over admitted requests."""
    return cap + sum(max(0, cost - held) for held, cost in zip(reservations, costs))


def burst(port: int, key: str, payload: bytes, headers, mode: str) -> list[Answer]:
    barrier = threading.Barrier(CONCURRENT)
    answers: list = [None] * CONCURRENT

    def one(index: int) -> None:
        request_headers = [("host", "api.local"), ("authorization", f"Bearer {key}"), ("content-type", "application/json"),
                           ("x-request-id", f"burst-{index}-{time.monotonic_ns()}"), *headers]
        if mode:
            request_headers.append(("x-upstream-mode", mode))
        barrier.wait(timeout=10)
        answers[index] = send_h1(port, "POST", "/v1/chat/completions", request_headers, payload, timeout=20)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def test_the_doc_states_the_bound_this_test_checks():
    assert FORMULA in DOC.read_text(), f"docs/configuration.md no longer states `{FORMULA}`"


@pytest.mark.parametrize("run", list(RUNS))
def test_fifty_concurrent_requests_stay_within_the_documented_bound(bypass_world, run: str):
    payload, headers, mode, unfixed_limit = RUNS[run]
    gateway = bypass_world.gateway(rendered=True, folded=False)
    key = bypass_world.spend_keys[run]
    gateway.upstream.clear()
    gateway.upstream.delay_s = 0.05  # answers overlap: admission is tested under concurrency
    try:
        answers = burst(gateway.envoy.port, key.plaintext, payload, headers, mode)
    finally:
        gateway.upstream.delay_s = 0.0
    _, _, limit, choices = request_limits(payload)
    reservation = C.reservation(payload, limit, choices)

    admitted = [a for a in answers if a is not None and a.status == 200]
    refused = [a for a in answers if a is None or a.status != 200]
    assert all(a is not None and (a.status, a.header("x-keyward-error")) == (403, "spend_cap_exceeded") for a in refused), \
        [repr(a) for a in refused if a is None or a.header("x-keyward-error") != "spend_cap_exceeded"][:3]
    assert admitted and refused, f"{run}: {len(admitted)} admitted, {len(refused)} refused: the cap did not bite"
    hits = [h for h in gateway.upstream.recorded() if h.usage is not None]
    assert len(hits) == len(admitted), f"{run}: {len(hits)} provider hits for {len(admitted)} answers"
    assert not any(C.upstream_may_compress(h) for h in hits), "the provider was allowed to compress"

    costs = [C.price(h.usage.input_tokens, h.usage.output_tokens) for h in hits]
    # What keyward charges: the priced usage when it can read it, the reservation otherwise.
    charges = [reservation if h.compressed else cost for h, cost in zip(hits, costs)]
    view = bypass_world.plane.wait_for_spent(key.id, sum(charges))
    assert view["spent_microusd"] == sum(charges), f"{run}: the control plane shows {view['spent_microusd']}, expected {sum(charges)}"
    assert sum(charges) >= sum(costs), f"{run}: keyward charged less than the provider billed"

    bound = spend_bound(CAP, [reservation] * len(hits), costs)
    assert sum(costs) <= bound, f"{run}: spend {sum(costs)} beyond the documented bound {bound}"
    assert sum(charges) <= spend_bound(CAP, [reservation] * len(hits), charges)
    # The provider honours the limits and the input estimate is an upper bound: no overshoot.
    assert all(cost <= reservation for cost in costs) and bound == CAP

    # Past the cap: the next request is refused.
    late = send_h1(gateway.envoy.port, "POST", "/v1/chat/completions",
                   [("host", "api.local"), ("authorization", f"Bearer {key.plaintext}"), *headers], payload)
    assert (late.status, late.header("x-keyward-error")) == (403, "spend_cap_exceeded"), late

    # This test can fail: what a keyward without the fixes would have let through.
    unfixed = C.reservation(payload, unfixed_limit, 1)
    if run in ("conflicting_max_fields", "n_128"):
        # Reserving the smaller limit (or ignoring n), all 50 fit under the cap at once.
        let_through = min(CONCURRENT, CAP // unfixed)
        unfixed_spend = let_through * costs[0]
        assert unfixed_spend > spend_bound(CAP, [reservation] * let_through, [costs[0]] * let_through), \
            f"{run}: a keyward reserving {unfixed} would also stay within the bound: the test could not fail"
    else:
        # A keyward that let the answer be compressed charged nothing for it (`missing_usage:
        # zero`): 0 < the provider's bill, which `charged >= billed` above refuses.
        assert sum(costs) > 0, f"{run}: charging nothing would also pass"
    print(f"{run}: {len(admitted)}/{CONCURRENT} admitted, reservation {reservation}, costs {sum(costs)}, "
          f"charged {sum(charges)}, bound {bound}; unfixed reservation {unfixed}")
