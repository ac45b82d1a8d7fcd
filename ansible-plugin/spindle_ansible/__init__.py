"""Spindle's Ansible integration: the Python side that turns Ansible's
remote steps into requests for the Spindle controller."""
