"""Simulated VMs that run the real bootstrap: sandbox VMs (namespaces, OpenSSH sshd) and, where
the machine has no namespaces or the user is not root, light VMs (a directory, a process
session, a paramiko sshd)."""

from simulator.sandbox.fleet import (
    LightFleet,
    SandboxConfig,
    SandboxFleet,
    SandboxVmInfo,
    sandbox_problem,
)
from simulator.sandbox.light_vm import light_problem

__all__ = [
    "LightFleet",
    "SandboxConfig",
    "SandboxFleet",
    "SandboxVmInfo",
    "light_problem",
    "sandbox_problem",
]
