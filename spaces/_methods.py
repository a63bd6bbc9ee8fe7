"""The spec keys of each compression method, declared once, as plain data (no torch).

A compression method is a frozen config dataclass and a function registered for it in
``compress`` (``@compress.register(Config)``), plus one :class:`MethodKeys` here: the keys of its
``compress.<name>`` section of the spec. Everything else derives from that declaration:
validating the section (:func:`parse_section`), drawing its keys in a trial
(:func:`sample_section`), the results columns (one per key, named :attr:`Key.column`) and the
configs the trial function builds (each key with a ``field`` fills that field of the config).

To add a key to a method, add one :class:`Key` line to its declaration below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from slimtune.spaces._distributions import Choice, Fixed, IntRange, Param, check_values, parse_param, suggest
from slimtune.spaces._errors import SpecError

#: Stands for "no second default" in :attr:`Key.default_if_written`.
_SAME = "<same>"


@dataclass(frozen=True)
class When:
    """A key is drawn only where the column drawn before it (in the same trial) satisfies this.

    ``among``: the value is one of these; ``below``/``above``: the value is < / > the bound.
    ``checked``: an ``among`` condition is also checked against the spec: writing the key is
    an error when no value the spec allows for ``column`` satisfies it.
    """

    column: str
    among: tuple[Any, ...] = ()
    below: float | None = None
    above: float | None = None
    checked: bool = True

    def holds(self, cfg: dict[str, Any]) -> bool:
        if self.column not in cfg:
            return False
        v = cfg[self.column]
        return ((not self.among or v in self.among) and (self.below is None or v < self.below)
                and (self.above is None or v > self.above))


@dataclass(frozen=True)
class Key:
    """One spec key of a method: ``compress.<method>.<name>``.

    kind: ``bool`` | ``choice`` (one of ``values``) | ``int`` | ``float``; numbers lie in
    ``low..high`` (``low_open``/``high_open``: the bound itself is excluded) or are one of
    ``also``. ``default``: the value when the key is not written (None: not drawn unless
    written); ``default_if_written``: the value when other keys of the section are written.
    ``column``: its results column and name in a trial's configuration (default: ``name``).
    ``when``: drawn only where these hold; ``instead_of``: where this key is written and drawn,
    that key of the method is not drawn. ``field``: the config field it fills (None: none).
    ``rule``: the error text (default: from the kind and range). ``collapse``: a choice of
    one value is that fixed value. ``doc``: one line on what it does (the generated spec reference shows it).
    """

    name: str
    kind: str
    default: Any = None
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple[Any, ...] = ()
    column: str = ""
    when: tuple[When, ...] = ()
    instead_of: str | None = None
    field: str | None = None
    rule: str = ""
    default_if_written: Any = _SAME
    collapse: bool = False
    doc: str = ""

    @property
    def col(self) -> str:
        return self.column or self.name

    def ok(self, v: Any) -> bool:
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind == "choice":
            return v in self.values
        if isinstance(v, bool) or not isinstance(v, int if self.kind == "int" else (int, float)):
            return False
        if v in self.also:
            return True
        return ((isinstance(v, int) or math.isfinite(v))
                and (self.low is None or (v > self.low if self.low_open else v >= self.low))
                and (self.high is None or (v < self.high if self.high_open else v <= self.high)))

    @property
    def rule_text(self) -> str:
        if self.rule:
            return self.rule
        if self.kind == "bool":
            return "must be true or false"
        if self.kind == "choice":
            return f"must be one of {', '.join(map(str, self.values))}"
        word = "an integer" if self.kind == "int" else "a number"
        if self.high is None:
            return f"must be {word} {'>' if self.low_open else '>='} {self.low:g}"
        return f"`{self.low:g} {'<' if self.low_open else '<='} {self.name} {'<' if self.high_open else '<='} " \
               f"{self.high:g}` must hold"

    def cast(self, v: Any) -> Any:
        """A value read back from a row (numpy or pandas scalar) as the kind's Python type."""
        return {"bool": bool, "int": int, "float": float}.get(self.kind, lambda x: x)(v)

    def parse(self, path: str, raw: Any) -> Param:
        p = parse_param(path, raw)
        ok = self.ok
        if self.kind == "int" and not isinstance(p, IntRange):
            ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and self.ok(v)  # noqa: E731
        p = check_values(path, p, ok, self.rule_text, raw)
        if self.collapse and isinstance(p, Choice) and len(p.values) == 1:
            p = Fixed(p.values[0])
        if isinstance(p, IntRange) and self.high is not None and p.high > self.high:  # reaches an `also` value
            raise SpecError(path, f"an int range of {self.name} must lie within {self.low:g}..{self.high:g} "
                            f"({self.high + 1:g}..{min(self.also) - 1:g} are not valid)", raw,
                            f"use {{choice: [{self.low:g}, {self.high:g}, {', '.join(map(str, self.also))}]}} "
                            f"to include {', '.join(map(str, self.also))}")
        return p


@dataclass(frozen=True)
class MethodKeys:
    """The declaration of a compression method's spec keys (the section ``compress.<name>``).

    ``config``: ``"module:Class"``, the config type the trial builds from the keys with a
    ``field`` (None for the built-in prune and quantize, whose stages the trial knows). A
    declared method applies where each of those keys was drawn; it runs after pruning (and its
    fine-tuning) and before quantization.
    """

    name: str
    keys: tuple[Key, ...]
    config: str | None = None
    doc: str = ""

    def key(self, name: str) -> Key:
        return next(k for k in self.keys if k.name == name)

    @property
    def columns(self) -> list[str]:
        return [k.col for k in self.keys]


PRUNE_METHODS = ("none", "magnitude", "structured")
_PRUNED = When("prune_method", among=("magnitude", "structured"))
_MAGNITUDE = When("prune_method", among=("magnitude",))
_QUANTIZED = When("bits", below=32)

PRUNE = MethodKeys("prune", (
    Key("method", "choice", "none", values=PRUNE_METHODS, column="prune_method", default_if_written="magnitude",
        collapse=True, doc="none; magnitude zeroes the smallest weights; structured removes whole neurons and "
        "channels (default magnitude once any other prune key is written)"),
    Key("sparsity", "float", 0.5, low=0, high=1, high_open=True, when=(_PRUNED,),
        doc="magnitude: the fraction of weights zeroed; structured: the fraction of channels removed"),
    Key("threshold", "float", None, low=0, when=(_MAGNITUDE,), instead_of="sparsity",
        rule="`threshold >= 0` (finite) must hold", doc="magnitude: zero every |w| < threshold instead of a fraction"),
    Key("scope", "choice", "global", values=("global", "layer"), when=(_MAGNITUDE,),
        doc="magnitude: rank all weights together (global) or each tensor on its own (layer)"),
    # written with method none it is accepted (and not drawn), as before
    Key("finetune_epochs", "int", 0, low=0, when=(When("prune_method", among=_PRUNED.among, checked=False),),
        doc="epochs of fine-tuning after pruning, the pruned weights held at zero"),
    Key("gradual", "bool", False, when=(_MAGNITUDE, When("finetune_epochs", above=0)),
        doc="magnitude: reach the sparsity along the cubic schedule while fine-tuning, instead of at once"),
), doc="pruning: magnitude (zeroes weights) or structured (removes channels)")

QUANT_BITS = (2, 8)  # quantized widths; 32 = no quantization
QUANTIZE = MethodKeys("quantize", (
    Key("bits", "int", 32, low=QUANT_BITS[0], high=QUANT_BITS[1], also=(32,), field="bits",
        rule=f"bits must be an integer in {QUANT_BITS[0]}..{QUANT_BITS[1]}, or 32 for no quantization",
        doc="the weights' width in bits (affine quantization); 32: not quantized"),
    Key("per_channel", "bool", True, when=(_QUANTIZED,), field="per_channel",
        doc="one scale and zero-point per output channel (false: per tensor)"),
    Key("symmetric", "bool", False, when=(_QUANTIZED,), field="symmetric",
        doc="a range symmetric about zero, Q = max|w| / (2^(bits-1) - 1) (false: fitted to min..max)"),
    Key("mode", "choice", "ptq", values=("ptq", "qat"), column="quant_mode", when=(_QUANTIZED,),
        doc="ptq: quantize after training; qat: fine-tune qat_epochs with fake-quantized weights, then quantize"),
    Key("qat_epochs", "int", 1, low=1, when=(When("quant_mode", among=("qat",)),),
        rule="must be an integer >= 1 (mode: ptq for none)", doc="epochs of quantization-aware fine-tuning"),
    Key("bits_first", "int", None, low=QUANT_BITS[0], high=QUANT_BITS[1], when=(_QUANTIZED,), field="bits_first",
        rule=f"must be an integer in {QUANT_BITS[0]}..{QUANT_BITS[1]}",
        doc="mixed precision: the first layer's width instead of bits (drawn only when written)"),
    Key("bits_last", "int", None, low=QUANT_BITS[0], high=QUANT_BITS[1], when=(_QUANTIZED,), field="bits_last",
        rule=f"must be an integer in {QUANT_BITS[0]}..{QUANT_BITS[1]}",
        doc="mixed precision: the last layer's width instead of bits (drawn only when written)"),
    Key("assign", "choice", None, values=("manual", "sensitivity"), column="bits_assign", when=(_QUANTIZED,),
        doc="manual: the widths as written; sensitivity: the same average width, placed per layer by each "
        "layer's sensitivity"),
), doc="affine k-bit quantization, post-training (ptq) or quantization-aware (qat)")

DISTILL = MethodKeys("distill", (
    Key("weight", "float", None, low=0, high=1, high_open=True, column="distill_weight",
        doc="the share of the fine-tuning and QAT loss that follows the teacher (0 or absent: off)"),
    Key("temperature", "float", 2.0, low=0, low_open=True, column="distill_temperature",
        when=(When("distill_weight", above=0),), rule="`temperature > 0` (finite) must hold",
        doc="softens both models' class probabilities (classification; regression follows the outputs)"),
), doc="knowledge distillation: fine-tuning and QAT also learn from the sweep's best dense model so far")

#: Every declared method, in the order its keys are drawn and its columns appear.
METHODS: dict[str, MethodKeys] = {m.name: m for m in (PRUNE, QUANTIZE, DISTILL)}


@dataclass(frozen=True)
class Section:
    """A method's section of a parsed spec: ``section.<key>`` is the key's :data:`Param`
    (None where the key has no default and is not written)."""

    declared: MethodKeys  # (a key may be called ``method``)
    values: tuple[tuple[str, Param | None], ...] = field(default=())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for key, value in self.__dict__.get("values", ()):
            if key == name:
                return value
        raise AttributeError(f"compress.{self.declared.name} has no key {name!r}")


def parse_section(method: MethodKeys, raw: dict[str, Any]) -> Section:
    """Validate the spec's ``compress.<method>`` mapping (already checked for unknown keys)."""
    base = f"compress.{method.name}"
    values: dict[str, Param | None] = {}
    for k in method.keys:
        default = k.default if (not raw or k.default_if_written == _SAME) else k.default_if_written
        if k.name in raw or default is not None:
            values[k.name] = k.parse(f"{base}.{k.name}", raw[k.name] if k.name in raw else default)
        else:
            values[k.name] = None
    for k in method.keys:
        if k.name in raw:
            _check_applies(method, k, values, raw[k.name])
    return Section(method, tuple(values.items()))


def _possible(method: MethodKeys, column: str, values: dict[str, Param | None]) -> set | None:
    """The values the spec allows for ``column`` (None: not a finite set known here)."""
    k = next((k for k in method.keys if k.col == column), None)
    p = values.get(k.name) if k else None
    if isinstance(p, Fixed):
        return {p.value}
    return set(p.values) if isinstance(p, Choice) else None


def _check_applies(method: MethodKeys, k: Key, values: dict[str, Param | None], raw: Any) -> None:
    """A written key must apply to some choice the spec can make."""
    path = f"compress.{method.name}.{k.name}"
    where: dict[str, set] = {}
    for w in k.when:
        if w.checked and not w.among and (w.below is not None or w.above is not None):
            name = next(x.name for x in method.keys if x.col == w.column)
            if name in values and values[name] is None:  # a key without default, not written: never drawn
                raise SpecError(path, f"is only used when {name} is set", raw, f"set {name} or remove {k.name}")
            bound = _possible(method, w.column, values)
            if bound is not None and not any(w.holds({w.column: v}) for v in bound):
                rel = f"< {w.below:g}" if w.below is not None else f"> {w.above:g}"
                raise SpecError(path, f"is only used when {name} {rel}", raw, f"set {name} {rel} or remove {k.name}")
        possible = _possible(method, w.column, values) if w.checked and w.among else None
        if possible is None:
            continue
        where[w.column] = possible & set(w.among)
        if not where[w.column]:
            name = next(x.name for x in method.keys if x.col == w.column)
            raise SpecError(path, f"is only used when {name} is {' or '.join(map(str, w.among))}", raw,
                            f"set {name}: {w.among[0]} or remove {k.name}")
    for r in method.keys:
        if r.instead_of != k.name or values.get(r.name) is None:
            continue
        for w in r.when:  # where r is drawn, k is not: k must still apply somewhere
            if w.checked and w.among and w.column in where and not where[w.column] - set(w.among):
                raise SpecError(path, f"is not used when {r.name} is set", raw, f"remove {k.name} or {r.name}")


def sample_section(section: Section, trial: Any, cfg: dict[str, Any]) -> None:
    """Draw the section's keys that apply into ``cfg`` (define-by-run), in declaration order."""
    values = dict(section.values)
    for k in section.declared.keys:
        if values[k.name] is None or not all(w.holds(cfg) for w in k.when):
            continue
        if any(r.instead_of == k.name and values[r.name] is not None and all(w.holds(cfg) for w in r.when)
               for r in section.declared.keys):
            continue
        cfg[k.col] = suggest(trial, k.col, values[k.name])


def default_sections() -> tuple[Section, ...]:
    return tuple(parse_section(m, {}) for m in METHODS.values())
