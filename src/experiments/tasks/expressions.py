"""A small, safe expression language for objective functions written in configs.

``parse("(1 - x)**2 + 100*(y - x**2)**2")`` checks the text with Python's ``ast`` and
turns it into an immutable tree of numbers, variables, ``+ - * / **`` and whitelisted
one-argument functions. The tree is evaluated with torch ops (any device, dtype or
batch shape; autograd keeps working) or converted to sympy. Nothing is ever passed to
``eval``/``exec``, and the cost of hostile input is bounded before any work is done.
"""

from __future__ import annotations

import ast
import math
import operator
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

from experiments.errors import ConfigError

if TYPE_CHECKING:
    import sympy

MAX_LENGTH = 1000  # characters; checked before ast.parse so the parser never sees more
MAX_DEPTH = 100  # tree levels and bracket nesting; far below Python's recursion limit
MAX_NODES = 250  # numbers, names, operators and calls together
MAX_EXPONENT = 100.0  # |constant exponent|; stops 9**9**9**9 before anything is computed

FUNCTIONS: Mapping[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = MappingProxyType(
    {
        "abs": (torch.abs, "Abs"),
        "acos": (torch.acos, "acos"),
        "asin": (torch.asin, "asin"),
        "atan": (torch.atan, "atan"),
        "cos": (torch.cos, "cos"),
        "cosh": (torch.cosh, "cosh"),
        "exp": (torch.exp, "exp"),
        "log": (torch.log, "log"),
        "sigmoid": (torch.sigmoid, "sigmoid"),  # no sympy function: 1 / (1 + exp(-x))
        "sin": (torch.sin, "sin"),
        "sinh": (torch.sinh, "sinh"),
        "sqrt": (torch.sqrt, "sqrt"),
        "tan": (torch.tan, "tan"),
        "tanh": (torch.tanh, "tanh"),
    }
)
"""The whitelist: function name -> (torch function, name of the sympy function).

sympy is imported only when an expression is converted (``task=derivative``'s check): it
takes most of a second, which a run that never needs it should not pay.
"""

CONSTANTS: Mapping[str, tuple[float, str]] = MappingProxyType(
    {"pi": (math.pi, "pi"), "e": (math.e, "E")}
)
"""Names that are constants, not variables: name -> (float value, name of the sympy value)."""

_BINARY = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.Pow: ("**", operator.pow),
}
_OPERATIONS = {symbol: function for symbol, function in _BINARY.values()}

# Human names for the constructs people most often try; anything else uses its ast name.
_REFUSED = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.Slice: "slice",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "generator expression",
    ast.Compare: "comparison",
    ast.BoolOp: "boolean operator",
    ast.IfExp: "conditional expression",
    ast.JoinedStr: "f-string",
    ast.NamedExpr: "assignment expression (:=)",
    ast.Starred: "starred argument",
    ast.Tuple: "tuple",
    ast.List: "list",
    ast.Dict: "dict",
    ast.Set: "set",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}


class ExpressionError(ConfigError):
    """An expression in a config that is malformed, not allowed, or too costly."""


def _quote(text: str, limit: int = 60) -> str:
    """Quote ``text`` on one line, shortened so messages stay readable."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


@dataclass(frozen=True)
class Number:
    """A numeric literal; ``literal`` keeps ints exact for sympy."""

    literal: int | float

    def evaluate(self, values: Mapping[str, torch.Tensor]) -> float:
        return float(self.literal)

    def to_sympy(self, symbols: Mapping[str, sympy.Symbol]) -> sympy.Expr:
        import sympy

        if isinstance(self.literal, int):
            return sympy.Integer(self.literal)
        return sympy.Float(self.literal)


@dataclass(frozen=True)
class Constant:
    """A named constant such as ``pi``."""

    name: str

    def evaluate(self, values: Mapping[str, torch.Tensor]) -> float:
        return CONSTANTS[self.name][0]

    def to_sympy(self, symbols: Mapping[str, sympy.Symbol]) -> sympy.Expr:
        import sympy

        return getattr(sympy, CONSTANTS[self.name][1])


@dataclass(frozen=True)
class Var:
    """A variable, looked up in the values passed to ``evaluate``."""

    name: str

    def evaluate(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return values[self.name]

    def to_sympy(self, symbols: Mapping[str, sympy.Symbol]) -> sympy.Expr:
        return symbols[self.name]


@dataclass(frozen=True)
class Negate:
    """Unary minus."""

    operand: Node

    def evaluate(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        return -self.operand.evaluate(values)

    def to_sympy(self, symbols: Mapping[str, sympy.Symbol]) -> sympy.Expr:
        return -self.operand.to_sympy(symbols)


@dataclass(frozen=True)
class Binary:
    """One of ``+ - * / **``."""

    op: str
    left: Node
    right: Node

    def evaluate(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        return _OPERATIONS[self.op](self.left.evaluate(values), self.right.evaluate(values))

    def to_sympy(self, symbols: Mapping[str, sympy.Symbol]) -> sympy.Expr:
        return _OPERATIONS[self.op](self.left.to_sympy(symbols), self.right.to_sympy(symbols))


@dataclass(frozen=True)
class Call:
    """A whitelisted function of one argument."""

    name: str
    arg: Node

    def evaluate(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return FUNCTIONS[self.name][0](self.arg.evaluate(values))

    def to_sympy(self, symbols: Mapping[str, sympy.Symbol]) -> sympy.Expr:
        import sympy

        arg = self.arg.to_sympy(symbols)
        if self.name == "sigmoid":
            return 1 / (1 + sympy.exp(-arg))
        return getattr(sympy, FUNCTIONS[self.name][1])(arg)


@dataclass(frozen=True)
class Folded:
    """A constant sub-expression, computed once at parse time.

    Evaluation uses ``value`` so torch never sees an operation between two Python floats
    (which could raise, e.g. ``0.0 ** -1``); sympy uses the exact ``source``.
    """

    value: float
    source: Node

    def evaluate(self, values: Mapping[str, torch.Tensor]) -> float:
        return self.value

    def to_sympy(self, symbols: Mapping[str, sympy.Symbol]) -> sympy.Expr:
        return self.source.to_sympy(symbols)


Node = Number | Constant | Var | Negate | Binary | Call | Folded


@dataclass(frozen=True)
class Expression:
    """A parsed expression; build it with :func:`parse`.

    Attributes:
        text: The expression as written in the config.
        variables: Variable names in order of first appearance.
        key: The config key the text came from, named in error messages.
        tree: The validated tree that ``evaluate`` and ``to_sympy`` walk.
    """

    text: str
    variables: tuple[str, ...]
    tree: Node = field(repr=False, compare=False)
    key: str = "task.expr"

    def evaluate(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Evaluate with torch; tensors broadcast, so a grid of points works too.

        Args:
            values: A tensor (or number) for each variable; extra keys are ignored.

        Returns:
            A tensor with the inputs' dtype and device (broadcast shape).

        Raises:
            ConfigError: If a variable has no value.
        """
        missing = [name for name in self.variables if name not in values]
        if missing:
            raise ExpressionError(
                f"{self.key}: no value for variable {missing[0]!r} in {_quote(self.text)}; "
                f"it needs {', '.join(self.variables)}"
            )
        tensors = {name: torch.as_tensor(values[name]) for name in self.variables}
        result = self.tree.evaluate(tensors)
        if isinstance(result, torch.Tensor):
            return result
        # No variables: give the constant the dtype/device of whatever the caller passed.
        like = next((v for v in values.values() if isinstance(v, torch.Tensor)), None)
        if like is None:
            return torch.tensor(result)
        return torch.tensor(result, dtype=like.dtype, device=like.device)

    __call__ = evaluate

    def to_sympy(self, symbols: Mapping[str, sympy.Symbol] | None = None) -> sympy.Expr:
        """Build the sympy expression from the tree (never from the text).

        Args:
            symbols: Symbol to use for each variable; missing ones become real symbols.

        Returns:
            The exact sympy expression (integer literals stay integers).
        """
        import sympy

        merged = {name: sympy.Symbol(name, real=True) for name in self.variables}
        merged.update(symbols or {})
        return self.tree.to_sympy(merged)


def parse(text: str, key: str = "task.expr") -> Expression:
    """Check an expression and build its tree.

    Args:
        text: E.g. ``"3*x**2 + 6*x - 9"``.
        key: The config key the text came from, named in error messages.

    Returns:
        The parsed :class:`Expression`.

    Raises:
        ExpressionError: A one-line :class:`ConfigError` naming ``key`` and quoting the
            offending piece, for anything outside the language or over the limits.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"{key} must be a string, got {type(text).__name__}")
    source = text.strip()
    if not source:
        raise ExpressionError(f"{key} is empty")
    if len(source) > MAX_LENGTH:
        raise ExpressionError(
            f"{key} is {len(source)} characters long; at most {MAX_LENGTH} are allowed"
        )
    _check_nesting(source, key)
    body = _parse_ast(source, key)
    builder = _Builder(source, key)
    tree, _ = builder.build(body, depth=1)
    return Expression(text, tuple(builder.variables), tree, key)


def _check_nesting(source: str, key: str) -> None:
    """Refuse deep bracket nesting before the parser (which recurses) sees it."""
    depth = 0
    for char in source:
        if char in "([{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ExpressionError(
                    f"{key}: brackets nested deeper than {MAX_DEPTH} in {_quote(source)}"
                )
        elif char in ")]}":
            depth -= 1


def _parse_ast(source: str, key: str) -> ast.expr:
    """Run ``ast.parse``, turning every way it can fail into one ConfigError line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "'str' object is not callable"
            return ast.parse(source, mode="eval").body
    except SyntaxError as error:
        reason = error.msg
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes, too complex
        reason = str(error) or type(error).__name__
    raise ExpressionError(f"{key} does not parse: {reason} in {_quote(source)}")


class _Builder:
    """Converts a validated ``ast`` tree into ours, collecting variables as it goes.

    ``build`` returns ``(node, value)``: ``value`` is the float of a constant
    sub-expression (computed in float64, never with Python ints) or None.
    """

    def __init__(self, source: str, key: str):
        self.source = source
        self.key = key
        self.variables: dict[str, None] = {}  # an ordered set
        self.nodes = 0

    def fail(self, message: str, node: ast.AST, hint: str = "") -> ExpressionError:
        piece = ast.get_source_segment(self.source, node) or ast.unparse(node)
        return ExpressionError(f"{self.key}: {message} {_quote(piece)}{hint}")

    def build(self, node: ast.AST, depth: int) -> tuple[Node, float | None]:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(f"more than {MAX_NODES} operations and operands in", node)
        if depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} in", node)
        if isinstance(node, ast.Constant):
            return self.number(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node, depth)
        if isinstance(node, ast.BinOp):
            return self.binary(node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        what = _REFUSED.get(type(node), type(node).__name__)
        raise self.fail(f"{what} is not allowed:", node)

    def number(self, node: ast.Constant) -> tuple[Node, float]:
        literal = node.value
        # bool is an int subclass; True**x must not sneak in as 1.
        if isinstance(literal, bool) or not isinstance(literal, int | float):
            what = "string" if isinstance(literal, str | bytes) else type(literal).__name__
            raise self.fail(f"{what} literal is not allowed:", node)
        try:
            value = float(literal)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise self.fail("number is too large:", node)
        return Number(literal), value

    def name(self, node: ast.Name) -> tuple[Node, float | None]:
        name = node.id
        if name in CONSTANTS:
            return Constant(name), CONSTANTS[name][0]
        if name in FUNCTIONS:
            raise self.fail(f"function {name!r} must be called, as in '{name}(x)'; got", node)
        if name.startswith("_"):
            raise self.fail("names starting with '_' are not allowed:", node)
        self.variables.setdefault(name)
        return Var(name), None

    def unary(self, node: ast.UnaryOp, depth: int) -> tuple[Node, float | None]:
        if not isinstance(node.op, ast.USub | ast.UAdd):
            raise self.fail("only unary + and - are allowed:", node)
        operand, value = self.build(node.operand, depth + 1)
        if isinstance(node.op, ast.UAdd):
            return operand, value
        if value is None:
            return Negate(operand), None
        return Folded(-value, Negate(operand)), -value

    def binary(self, node: ast.BinOp, depth: int) -> tuple[Node, float | None]:
        if type(node.op) not in _BINARY:
            raise self.fail("only the operators + - * / ** are allowed:", node)
        symbol, operation = _BINARY[type(node.op)]
        left, left_value = self.build(node.left, depth + 1)
        right, right_value = self.build(node.right, depth + 1)
        if symbol == "**" and right_value is not None and abs(right_value) > MAX_EXPONENT:
            raise self.fail(
                f"exponent {right_value:.6g} is too large in", node, f"; at most {MAX_EXPONENT:g}"
            )
        tree = Binary(symbol, left, right)
        if left_value is None or right_value is None:
            return tree, None
        return self.fold(tree, operation(_float64(left_value), _float64(right_value)), node)

    def call(self, node: ast.Call, depth: int) -> tuple[Node, float | None]:
        if not isinstance(node.func, ast.Name):
            raise self.fail("only calls of named functions are allowed:", node)
        name = node.func.id
        if name not in FUNCTIONS:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise self.fail(f"unknown function {name!r} in", node, f"; allowed: {allowed}")
        if node.keywords:
            raise self.fail("keyword arguments are not allowed:", node)
        if len(node.args) != 1:
            raise self.fail(f"{name} takes exactly one argument, got {len(node.args)}:", node)
        arg, value = self.build(node.args[0], depth + 1)
        tree = Call(name, arg)
        if value is None:
            return tree, None
        return self.fold(tree, FUNCTIONS[name][0](_float64(value)), node)

    def fold(self, tree: Node, result: torch.Tensor, node: ast.AST) -> tuple[Node, float]:
        value = result.item()
        if not math.isfinite(value):
            raise self.fail("constant is not a finite number:", node)
        return Folded(value, tree), value


def _float64(value: float) -> torch.Tensor:
    """Constants are folded by torch in float64: overflow gives inf instead of raising."""
    return torch.tensor(value, dtype=torch.float64)


def check_expression(expr: str, values: dict[str, float], key: str) -> None:
    """Parse ``task.expr`` and check that the mapping ``key`` gives each variable a value.

    Args:
        expr: the expression's text.
        values: the variable -> number mapping (``task.init``, ``task.at``).
        key: that mapping's config key, for the message.
    """
    variables = parse(expr).variables
    missing = [name for name in variables if name not in values]
    if missing:
        example = ", ".join(f"{name}: {values.get(name, 0.0)}" for name in variables)
        raise ConfigError(
            f"{key} has no value for {', '.join(missing)} used in task.expr {expr!r}; "
            f"e.g. '{key}={{{example}}}'"
        )
