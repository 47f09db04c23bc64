"""A protocol-faithful fake of GitHub's REST API and the Actions runner-scale-set service.

Reached only over HTTP. Start it with `python -m simulator.github` or, in tests,
`simulator.github.server.run_in_thread(SimulatorConfig(...))`; drive it with
`simulator.github.control.SimulatorControl`. See sim/README.md.
"""
