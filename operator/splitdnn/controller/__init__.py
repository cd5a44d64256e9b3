"""The splitdnn operator: kopf handlers that turn a DNNService into wired per-block pods.

``operator`` holds every kopf decorator and the operator settings; ``dnnservice``,
``splitplan`` and ``crosslink`` are the plain handler functions of each kind; ``children``
builds child objects as pure functions; ``kube`` applies them (server-side apply, one
field manager); ``conditions`` keeps the status conditions; ``discovery`` finds hardware
classes from node labels; ``planner`` turns analysis and profiles into a planning problem
and its result into a SplitPlan. Nothing in ``splitdnn.runtime``, ``planning`` or ``graph``
imports this package.
"""
