"""OpenMM's expression language (Lepton) parsed and evaluated with NumPy or JAX, as OpenMM's Custom*Forces use it.

An expression is a formula followed by optional definitions, ``"E; a = f(b); b = g(r)"``. As in Lepton's parser the
text is cut at every ``;`` from the end: the last definition is read first, and each definition (and finally the
formula) may use every definition written after it; a name defined nowhere is a free variable (a distance ``r``, a
per-particle parameter ``charge1``, a global parameter). Grammar (precedence low to high):

    sum     := product (("+" | "-") product)*                       left associative
    product := unary (("*" | "/") unary)*                          left associative
    unary   := "-" unary-operand | operand (where "-" binds tighter than * and / but looser than ^: -x^2 = -(x^2))
    power   := operand "^" power                                   right associative: a^b^c = a^(b^c)
    operand := number | name | name "(" sum ("," sum)* ")" | "(" sum ")"

Functions: sqrt exp log sin cos sec csc tan cot asin acos atan atan2 sinh cosh tanh erf erfc, step(x) = [x >= 0],
delta(x) = [x == 0], square, cube, recip, min, max, abs, floor, ceil, select(x, y, z) = (y if x != 0 else z), and
the force's tabulated functions by name (boltzflow.molecules.tabulated). ``x^n`` with a constant integer n is an
integer power (exact for negative x, as C's pow).

:func:`evaluate` folds constants: a subexpression whose inputs are all NumPy arrays (per-particle parameters, tables
looked up at parameter indices, global parameters) is computed once in NumPy float64; the rest runs in JAX in the
dtype of the JAX inputs (constants are cast to it, so nothing float64 leaks into a float32 computation), jittable and
differentiable. Step, delta, floor, ceil and discrete tables have zero derivative, as in OpenMM's forces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
import scipy.special as sp

from boltzflow.errors import BoltzflowError

_OPERATORS = "+-*/^"
_PRECEDENCE = {"+": 0, "-": 0, "*": 1, "/": 1, "^": 3}


@dataclass(frozen=True, eq=False)
class Node:
    """One node of a parsed expression: ``kind`` is "num" (``value``), "var" (``name``) or "call" (``name`` is an
    operator "+ - * / ^", "neg" or a function name, with ``args``)."""

    kind: str
    name: str = ""
    value: float = 0.0
    args: tuple[Node, ...] = ()


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) tokens: "num", "op", "name", "func" (a name directly followed by "("), "(", ")", ","."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "(),":
            out.append((c, c))
            i += 1
        elif c in _OPERATORS:
            out.append(("op", c))
            i += 1
        elif c == "." or c.isdigit():
            j, dot, exp = i + 1, c == ".", False
            while j < n:
                d = text[j]
                if d.isdigit():
                    j += 1
                elif d == "." and not dot:
                    dot, j = True, j + 1
                elif d in "eE" and not exp:
                    exp = True
                    j += 2 if j + 1 < n and text[j + 1] in "+-" else 1
                else:
                    break
            out.append(("num", text[i:j]))
            i = j
        else:
            j = i
            while j < n and text[j] not in _OPERATORS + ",()" and not text[j].isspace():
                j += 1
            if j < n and text[j] == "(":
                out.append(("func", text[i:j]))
                i = j + 1
            else:
                out.append(("name", text[i:j]))
                i = j
    return out


class _Parser:
    def __init__(self, tokens, definitions: Mapping[str, Node]):
        self.tokens, self.pos, self.definitions = tokens, 0, definitions

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (None, None)

    def expect(self, kind: str):
        if self.peek()[0] != kind:
            raise ValueError("unbalanced parentheses" if kind == ")" else f"expected {kind!r}")
        self.pos += 1

    def parse(self, precedence: int = 0) -> Node:
        kind, text = self.peek()
        if kind is None:
            raise ValueError("unexpected end of expression")
        self.pos += 1
        if kind == "num":
            try:
                node = Node("num", value=float(text))
            except ValueError:
                raise ValueError(f"bad number {text!r}") from None
        elif kind == "name":
            node = self.definitions.get(text) or Node("var", name=text)
        elif kind == "(":
            node = self.parse(0)
            self.expect(")")
        elif kind == "func":
            args = [self.parse(0)]
            while self.peek()[0] == ",":
                self.pos += 1
                args.append(self.parse(0))
            self.expect(")")
            node = Node("call", name=text, args=tuple(args))
        elif kind == "op" and text == "-":
            node = Node("call", name="neg", args=(self.parse(2),))
        else:
            raise ValueError(f"unexpected token {text!r}")
        while self.peek()[0] == "op":
            op = self.peek()[1]
            if _PRECEDENCE[op] < precedence:
                break
            self.pos += 1
            right = self.parse(_PRECEDENCE[op] + (op != "^"))
            node = Node("call", name=op, args=(node, right))
        return node


def parse(expression: str) -> Node:
    """Parse an OpenMM expression (module docstring) into a tree; a syntax error is one line naming the expression.

    Example:
        >>> parse("k*(r-r0)^2; k=100").kind
        'call'
    """
    try:
        parts = expression.split(";")
        definitions: dict[str, Node] = {}
        for sub in reversed(parts[1:]):
            if not sub.strip():
                continue
            name, eq, body = sub.partition("=")
            if not eq or not name.strip():
                raise ValueError("a definition does not name what it defines")
            definitions[name.strip()] = _whole(body, definitions)
        return _whole(parts[0], definitions)
    except ValueError as e:
        raise BoltzflowError(f"cannot read the expression {expression!r}: {e}") from None


def _whole(text: str, definitions: Mapping[str, Node]) -> Node:
    p = _Parser(_tokens(text), dict(definitions))
    node = p.parse(0)
    if p.pos != len(p.tokens):
        raise ValueError(f"unexpected text {p.tokens[p.pos][1]!r}")
    return node


def _nodes(node: Node):
    """Every distinct node of a tree (definitions used twice are one shared node)."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if id(n) not in seen:
            seen.add(id(n))
            yield n
            stack.extend(n.args)


def free_names(node: Node) -> set[str]:
    """Every free variable of a parsed expression."""
    return {n.name for n in _nodes(node) if n.kind == "var"}


def _ops(xp, special):
    """The operations of the language in one array namespace (np with scipy.special, or jnp with jax.scipy)."""
    return {
        "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b,
        "neg": lambda a: -a, "sqrt": xp.sqrt, "exp": xp.exp, "log": xp.log, "sin": xp.sin, "cos": xp.cos,
        "sec": lambda a: 1 / xp.cos(a), "csc": lambda a: 1 / xp.sin(a), "tan": xp.tan, "cot": lambda a: 1 / xp.tan(a),
        "asin": xp.arcsin, "acos": xp.arccos, "atan": xp.arctan, "atan2": xp.arctan2, "sinh": xp.sinh,
        "cosh": xp.cosh, "tanh": xp.tanh, "erf": special.erf, "erfc": special.erfc,
        "step": lambda a: xp.where(a >= 0, 1.0, 0.0), "delta": lambda a: xp.where(a == 0, 1.0, 0.0),
        "square": lambda a: a * a, "cube": lambda a: a * a * a, "recip": lambda a: 1 / a,
        # ties and 0 resolved as Lepton's derivatives do: min follows its second argument, max its first, |0|' = 1
        "min": lambda a, b: xp.where(a < b, a, b), "max": lambda a, b: xp.where(a >= b, a, b),
        "abs": lambda a: xp.where(a >= 0, a, -a), "floor": xp.floor, "ceil": xp.ceil,
        "select": lambda c, a, b: xp.where(c != 0, a, b),
    }


_NUMPY, _JAX = _ops(np, sp), _ops(jnp, jsp)
_ARITY = {"atan2": 2, "min": 2, "max": 2, "select": 3, "+": 2, "-": 2, "*": 2, "/": 2, "^": 2}
#: Functions whose derivative OpenMM takes as zero: their value is computed on the argument without its gradient.
_PIECEWISE_CONSTANT = {"step", "delta", "floor", "ceil"}


def evaluate(node: Node, env: Mapping[str, object], functions: Mapping[str, Callable] | None = None):
    """Evaluate a parsed expression.

    Args:
        node: from :func:`parse`.
        env: value of every free variable: NumPy arrays / floats (constants) or JAX arrays; shapes broadcast.
        functions: tabulated functions by name, each taking and returning arrays (NumPy in, NumPy out).

    Returns:
        A NumPy float64 array if every input it depends on is a NumPy constant, else a JAX array in the dtype of the
        JAX inputs.

    Example:
        >>> float(evaluate(parse("k*(r-r0)^2; k=100"), {"r": 1.5, "r0": 1.0}))
        25.0
    """
    functions = functions or {}
    dtypes = [v.dtype for v in env.values() if isinstance(v, jax.Array)]
    dtype = dtypes[0] if dtypes else None
    cache: dict[int, object] = {}

    def lift(v):
        return jnp.asarray(v, dtype) if not isinstance(v, jax.Array) else v

    def ev(n: Node):
        key = id(n)
        if key in cache:
            return cache[key]
        if n.kind == "num":
            out = np.float64(n.value)
        elif n.kind == "var":
            if n.name not in env:
                raise BoltzflowError(f"the expression uses {n.name!r}, which is neither a parameter nor a variable "
                                     "boltzflow's jax engine provides here")
            v = env[n.name]
            out = v if isinstance(v, jax.Array) else np.asarray(v, np.float64)
        elif n.name == "/" and _is_integer_power(n.args[1]) and _traced(ev(n.args[1].args[0])):
            # x / y^k as x * y^-k: the same value, and a gradient k x y^-(k+1) that stays finite in float32 where
            # autodiff of the quotient would square y^k (r^24 underflows below r = 0.026 nm: 0 * inf = NaN)
            base, k = ev(n.args[1].args[0]), int(n.args[1].args[1].value)
            out = lift(ev(n.args[0])) * base ** (-k)
        else:
            args = [ev(a) for a in n.args]
            want = _ARITY.get(n.name, 1)
            if n.name in functions:
                fn, want = functions[n.name], len(args)
            elif n.name == "^":
                fn = None
            elif n.name in _NUMPY:
                fn = _NUMPY[n.name]
            else:
                raise BoltzflowError(f"the expression calls {n.name}(), which boltzflow's jax engine does not know")
            if len(args) != want:
                raise BoltzflowError(f"{n.name}() takes {want} argument(s), the expression gives {len(args)}")
            traced = any(isinstance(a, jax.Array) for a in args)
            if n.name in _PIECEWISE_CONSTANT and traced:
                args = [jax.lax.stop_gradient(a) for a in args]
            if n.name == "^":
                a, b = args
                if _int_const(b):  # integer power (lax.integer_pow under JAX): exact and differentiable for a < 0
                    with np.errstate(all="ignore"):
                        out = (lift(a) if traced else a) ** int(b)
                elif traced:
                    out = jnp.power(lift(a), lift(b))
                else:
                    with np.errstate(all="ignore"):
                        out = np.power(a, b)
            elif n.name in functions:
                out = fn(*args)
            elif traced:
                out = _JAX[n.name](*[lift(a) for a in args])
            else:
                with np.errstate(all="ignore"):
                    out = np.asarray(fn(*args), np.float64)
        cache[key] = out
        return out

    return ev(node)


def _traced(v) -> bool:
    return isinstance(v, jax.Array)


def _is_integer_power(node: Node) -> bool:
    """node is y ^ k with k a literal integer in [1, 64]."""
    return (node.kind == "call" and node.name == "^" and node.args[1].kind == "num"
            and node.args[1].value == round(node.args[1].value) and 1 <= node.args[1].value <= 64)


def _int_const(b) -> bool:
    return (not isinstance(b, jax.Array) and np.ndim(b) == 0 and float(b) == round(float(b))
            and abs(float(b)) <= 64)
