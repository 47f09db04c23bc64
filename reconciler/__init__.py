"""Every rule about an owned VM's fate: the startup pass (reconcile.py, with SSH probes and console
markers) and the periodic sweep (sweep.py), each deciding by a pure table (policy.py). Imports
only `provisioners`."""
