"""scaleset-listener: GitHub Actions runner scale sets on single-use OpenStack VMs."""

__version__ = "0.1.0.dev0"
