"""Cloud fixtures for the provisioner's contract tests: the simulator's cloud and a real Nova."""
