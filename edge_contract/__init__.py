"""The wire contract shared by the agent (``agent/``) and the controller (``fleet/``).

What both sides put on the wire and read back, pure (no IO, no network, no crypto library):
the topic schema (``topics``), the payload codec and its limits (``payloads``), the device
message models (``messages``), the command replies and captured inputs (``replies``), the
repository-file request model and codec (``fetchcodec``), the release format
(``release``, ``card``), the desired-state message and its checks (``desired``), the update
reasons (``reasons``) and the wire's errors (``errors``). Signing and verifying stay behind
each side's one door to securesystemslib (``agent.ota.trust``, ``fleet.release.repo``).
"""
