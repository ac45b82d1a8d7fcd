"""`python -m spindle_ansible`: the ansible.cfg lines that enable Spindle
from this installation."""

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    print("[defaults]")
    print("# every host whose connection is ssh (the default) or local, any strategy:")
    print("connection_plugins = %s:%s" % (os.path.join(HERE, "serve_ssh"), os.path.join(HERE, "serve_local")))
    print("# (ssh hosts only: leave out the second directory)")
    print("# or only hosts with ansible_connection=spindle (or spindle_local):")
    print("# connection_plugins = %s" % os.path.join(HERE, "connection_plugins"))
    print("# or the strategy switch (deprecated by ansible-core since 2.19):")
    print("# connection_plugins = %s" % os.path.join(HERE, "connection_plugins"))
    print("# strategy_plugins = %s" % os.path.join(HERE, "strategy_plugins"))
    print("# strategy = spindle_linear")


if __name__ == "__main__":
    main()
