# Spindle's linear strategy: Ansible's own linear strategy, with ssh hosts served
# by Spindle's connection plugin.
import os
import sys

from ansible.plugins.strategy.linear import StrategyModule as _Base

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _spindle_strategy  # noqa: E402

DOCUMENTATION = """
name: spindle_linear
short_description: Ansible's linear strategy with ssh hosts served by Spindle
description:
  - Runs like the builtin C(linear) strategy; hosts whose connection is C(ssh)
    use the C(spindle) connection plugin instead.
author: Spindle developers
"""

StrategyModule = _spindle_strategy.wrap(_Base)
