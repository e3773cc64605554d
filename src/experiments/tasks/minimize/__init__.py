"""``task=minimize``: minimise an expression with any ``torch.optim`` optimizer.

``task`` is the task; ``plots`` draws its figures and ``progress`` its one-line progress
display on a terminal, both for this task only.
"""
