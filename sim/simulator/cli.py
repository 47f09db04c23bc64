"""`scaleset-listener-sim VERB [OPTIONS]`: the demo and each simulator as one command.

  demo       the listener against the built-in world (what `scaleset-listener demo` runs)
  github     the simulated GitHub + Actions service (`python -m simulator.github`)
  openstack  the simulated OpenStack cloud (`python -m simulator.openstack`)
  sandbox    sandbox VMs or light VMs for a simulated cloud (`python -m simulator.sandbox`)
  fleet      the scripted fleet (`python -m simulator.fleet`)

`scaleset-listener-sim VERB --help` shows a verb's options.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _demo(argv: list[str]) -> int:
    from simulator.demo import main

    return main(argv)


def _github(argv: list[str]) -> int:
    from simulator.github.__main__ import main

    return main(argv)


def _openstack(argv: list[str]) -> int:
    from simulator.openstack.__main__ import main

    main(argv)
    return 0


def _sandbox(argv: list[str]) -> int:
    from simulator.sandbox.__main__ import main

    return main(argv)


def _fleet(argv: list[str]) -> int:
    from simulator.fleet import main

    return main(argv)


# Each verb imports its simulator only when chosen: one command, no unneeded start-up cost.
VERBS: dict[str, Callable[[list[str]], int]] = {
    "demo": _demo,
    "github": _github,
    "openstack": _openstack,
    "sandbox": _sandbox,
    "fleet": _fleet,
}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    verb = VERBS.get(arguments[0]) if arguments else None
    if verb is None:
        problem = f"unknown verb {arguments[0]!r}" if arguments else "a verb is required"
        print(f"scaleset-listener-sim: {problem}\n\n{__doc__.strip()}", file=sys.stderr)
        return 2
    return verb(arguments[1:])


if __name__ == "__main__":
    sys.exit(main())
