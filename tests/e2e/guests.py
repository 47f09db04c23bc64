"""What plays the VMs in the end-to-end tests: the one line to change for real guests."""

from simulator.e2e_world import GuestKind

# "light": simulator/fleet.py (no SSH, console markers); "sandbox": simulator.sandbox guests.
GUESTS: GuestKind = "light"
