"""Sandbox VMs: simulated servers that boot for real (namespaces, sshd, the real bootstrap)."""

from simulator.sandbox.fleet import (
    SandboxConfig,
    SandboxFleet,
    SandboxVmInfo,
    sandbox_problem,
)

__all__ = ["SandboxConfig", "SandboxFleet", "SandboxVmInfo", "sandbox_problem"]
