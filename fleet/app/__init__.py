"""The controller's application layer: one use case per operator command, typed in and out.

``fleet.app.usecases.FleetApp`` holds the store, the release service (when OTA is on) and a
clock; each method takes a request model of ``edge_contract.controller`` and returns a reply
of ``fleet.app.replies``. The front ends are thin adapters over it: the MQTT RPC server
(``fleet.rpc_server``) and the CLI's direct ``--db`` mode (``fleet.cli``). Nothing here
touches MQTT or the command line.
"""
