"""The built-in world for the demo and the tests: peer systems reached only over sockets."""
