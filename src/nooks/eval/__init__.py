"""The fault-injection campaign (``nooks eval reliability``) and its report."""
