"""Startup reconciliation of leftover VMs. Imports only `provisioners`."""
