"""A simulated OpenStack cloud (Keystone, Nova, Glance, Neutron, a little Cinder) on one port.

The server side of the OpenStack APIs, faithful enough that unchanged openstacksdk works against
it. It imports nothing from the service (a peer system reached over sockets) and nothing from
openstacksdk (it is the other end of the wire). See sim/README.md for the URL layout and
the control API under /_sim/.
"""
