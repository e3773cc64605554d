"""``task=derivative``: f and its derivatives at a point, with autograd, checked by sympy.

``task`` is the task; ``autograd`` computes the values, ``symbolic`` checks each against
sympy at the exact point, and ``plots`` draws the figures, all for this task only.
"""
