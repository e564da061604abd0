"""The engine wing: what runs inside the training iteration.

It knows a ``PlanSource`` (``plan_source``) and nothing else about planning: it never imports
``swiftmoe.planning``, the simulator or the report (a test reads the imports to keep it so).
"""
