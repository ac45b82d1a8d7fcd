"""`python -m spindle_ansible`: the ansible.cfg lines that enable Spindle
from this installation."""

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    print("[defaults]")
    print("connection_plugins = %s" % os.path.join(HERE, "connection_plugins"))
    print("strategy_plugins = %s" % os.path.join(HERE, "strategy_plugins"))
    print("# then either, for every ssh host:")
    print("strategy = spindle_linear")
    print("# or, per host or group: ansible_connection=spindle")


if __name__ == "__main__":
    main()
