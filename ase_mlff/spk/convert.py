"""SchNetPack 2 ``NeuralNetworkPotential`` records -> ase-mlff SchNet / PaiNN, number for number.

The network is the same function; only the storage differs:

| SchNetPack                                   | ase-mlff                                        |
|----------------------------------------------|-------------------------------------------------|
| ``nn.Embedding(100, F)`` indexed by Z        | rows Z of the covered species                   |
| SchNet ``interactions[t].filter_network``    | ``filter_in`` rows t·F'..(t+1)·F', ``filter_out[t]`` |
| SchNet ``in2f``, ``f2out``                   | ``blocks[t].to_messages``, ``blocks[t].update`` |
| PaiNN ``filter_net`` (split s, vs, vv)       | ``filters`` (split s, vv, vs); tiled if shared  |
| PaiNN ``mu_channel_mix`` (V, W)              | ``blocks[t].mix`` (U = W, V = V)                |
| PaiNN ``intraatomic_context_net`` (ss,vv,sv) | ``blocks[t].gates`` (vv, sv, ss)                |
| shared interactions                          | the same weights copied into every block        |
| ``Atomwise.outnet``                          | ``readout``                                     |
| postprocessors ScaleProperty, AddOffsets     | ``scale``; ``element_energy`` = mean + atomref  |
| model energy unit ε, length unit ℓ           | all in eV and Å: energies × ε/eV; radial basis, |
|                                              | cutoff and first filter layer rescaled by ℓ/Å   |

With ``Y = Σ_i y_i`` the Atomwise sum, SchNetPack returns
``E = ε·(a·Y + Σ_i (b + t[Z_i]))`` after its postprocessors and ``F = −ε·f·∂Y/∂r``
with ``f`` the product of ScaleProperty factors on forces, so ``f = a`` is required.
"""

from __future__ import annotations

import math

import torch
from ase.data import chemical_symbols

from ..models import PaiNN, Potential, SchNet
from ..units import energy_factor, length_factor
from .unpickle import FunctionRef, ModuleRecord, PickledModel

SUPPORTED = ("supported are SchNet and PaiNN representations (GaussianRBF or BesselRBF, CosineCutoff), one "
             "Atomwise energy head with sum aggregation, Forces (with or without stress), and the "
             "postprocessors CastTo64, AddOffsets and ScaleProperty")
_ACTIVATIONS = {"shifted_softplus": "ssp", "ShiftedSoftplus": "ssp", "silu": "silu", "SiLU": "silu",
                "tanh": "tanh", "Tanh": "tanh"}


class Unsupported(ValueError):
    """A SchNetPack model this importer cannot reproduce exactly."""


def _fail(message: str):
    raise Unsupported(f"{message}; {SUPPORTED}")


def _activation(value) -> str | None:
    """Our name for a Dense layer's activation (None: identity)."""
    if isinstance(value, ModuleRecord) and value.name == "Identity" or value is None:
        return None
    name = value.name if isinstance(value, (FunctionRef, ModuleRecord)) else type(value).__name__
    if name not in _ACTIVATIONS:
        _fail(f"activation {name} is not supported (valid: {sorted(set(_ACTIVATIONS))})")
    return _ACTIVATIONS[name]


def _dense(record) -> list[tuple[torch.Tensor, torch.Tensor | None, str | None]]:
    """(weight [out, in], bias [out] or None, activation) of a Dense, Linear or Sequential of them."""
    if not isinstance(record, ModuleRecord):
        _fail(f"expected a dense layer, found {type(record).__name__}")
    if record.name == "Sequential":
        return [layer for child in record.children() for layer in _dense(child)]
    if record.name not in ("Dense", "Linear"):
        _fail(f"{record.class_name} in a dense network is not supported")
    activation = _activation(record.state.get("activation")) if record.name == "Dense" else None
    return [(record.tensor("weight"), record.tensor("bias"), activation)]


def _mlp_into(layers, target: torch.nn.Sequential, where: str) -> str | None:
    """Copy dense layers into one of our ``mlp`` Sequentials; returns their (single) activation."""
    linear = [m for m in target if isinstance(m, torch.nn.Linear)]
    if len(linear) != len(layers) or layers[-1][2] is not None:
        _fail(f"{where}: {len(layers)} layers (the last with activation {layers[-1][2]}) do not fit")
    for (weight, bias, _), module in zip(layers, linear):
        _copy(module, weight, bias)
    activations = {a for _, _, a in layers[:-1]}
    if len(activations) > 1 or None in activations:
        _fail(f"{where}: mixed activations {sorted(map(str, activations))} are not supported")
    return activations.pop() if activations else None


def _copy(module: torch.nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if tuple(module.weight.shape) != tuple(weight.shape):
        raise Unsupported(f"a weight of shape {list(weight.shape)} does not fit {list(module.weight.shape)}")
    module.weight.copy_(weight)
    if module.bias is not None:
        module.bias.copy_(bias if bias is not None else torch.zeros_like(module.bias))
    elif bias is not None:
        raise Unsupported("a layer with a bias where none is expected")


def _radial(record: ModuleRecord, ell: float) -> tuple[str, int, float | None, torch.Tensor]:
    """(our basis name, n_rbf, Gaussian width in Å or None, centers in Å or frequencies in 1/Å)."""
    if record.name == "GaussianRBF":
        centers, widths = record.tensor("offsets"), record.tensor("widths")
        if not torch.all(widths == widths[0]):
            _fail("GaussianRBF with unequal (trained) widths is not supported")
        return "gaussian", centers.numel(), float(widths[0]) * ell, centers.double() * ell
    if record.name == "BesselRBF":
        frequencies = record.tensor("freqs")
        return "bessel", frequencies.numel(), None, frequencies.double() / ell
    _fail(f"radial basis {record.class_name} is not supported")


def _cutoff(representation: ModuleRecord, ell: float) -> float:
    cutoff_fn = representation.child("cutoff_fn")
    if not isinstance(cutoff_fn, ModuleRecord) or cutoff_fn.name != "CosineCutoff":
        _fail(f"cutoff function {getattr(cutoff_fn, 'class_name', cutoff_fn)} is not supported")
    return float(cutoff_fn.tensor("cutoff")) * ell  # the float32 value SchNetPack computes with


def _common(representation: ModuleRecord, species: list[int] | None):
    embedding = representation.child("embedding")
    if embedding is None or embedding.name != "Embedding":
        _fail(f"nuclear embedding {getattr(embedding, 'class_name', None)} is not supported")
    electronic = representation.child("electronic_embeddings")
    if electronic is not None and electronic.children():
        _fail("electronic (charge/spin) embeddings are not supported")
    table = embedding.tensor("weight")  # [max_z, F], row Z
    numbers = species or list(range(1, min(table.shape[0], len(chemical_symbols))))
    if max(numbers) >= table.shape[0]:
        raise ValueError(f"species up to Z={max(numbers)} requested, but the model embeds Z < {table.shape[0]}")
    return table, numbers


def _schnet(rep: ModuleRecord, species, ell: float) -> SchNet:
    table, numbers = _common(rep, species)
    blocks = rep.child("interactions").children()
    basis, n_rbf, width, centers = _radial(rep.child("radial_basis"), ell)
    first = blocks[0]
    filter_layers = _dense(first.child("filter_network"))
    update_layers = _dense(first.child("f2out"))
    n_features, n_filters = table.shape[1], filter_layers[0][0].shape[0]
    activations = {filter_layers[0][2], update_layers[0][2]}
    if len(activations) != 1:
        _fail(f"SchNet with different activations in filters and updates {sorted(map(str, activations))}")
    model = SchNet(numbers, cutoff=_cutoff(rep, ell), n_features=n_features, n_interactions=len(blocks),
                   n_rbf=n_rbf, n_filters=None if n_filters == n_features else n_filters,
                   activation=activations.pop(), rbf=basis, rbf_width=width)
    with torch.no_grad():
        model.embedding.weight.copy_(table[numbers])
        _set_radial(model.rbf, basis, centers)
        # SchNetPack's Bessel basis is sin(kr)/r in its own length unit: 1/ℓ folds into the first layer
        rescale = ell if basis == "bessel" else 1.0
        for t, block in enumerate(blocks):
            (w_in, b_in, _), (w_out, b_out, out_act) = _dense(block.child("filter_network"))
            if out_act is not None:
                _fail("SchNet filter network with an activation after its last layer")
            rows = slice(t * n_filters, (t + 1) * n_filters)
            model.filter_in.weight[rows] = w_in * rescale
            model.filter_in.bias[rows] = b_in
            _copy(model.filter_out[t], w_out, b_out)
            (w_msg, b_msg, _), = _dense(block.child("in2f"))
            _copy(model.blocks[t].to_messages, w_msg, b_msg)
            _mlp_into(_dense(block.child("f2out")), model.blocks[t].update, "SchNet f2out")
    return model


def _painn(rep: ModuleRecord, species, ell: float) -> PaiNN:
    table, numbers = _common(rep, species)
    interactions = rep.child("interactions").children()
    mixings = rep.child("mixing").children()
    basis, n_rbf, width, centers = _radial(rep.child("radial_basis"), ell)
    F, n = table.shape[1], len(interactions)
    context = _dense(interactions[0].child("interatomic_context_net"))
    gates = _dense(mixings[0].child("intraatomic_context_net"))
    activations = {context[0][2], gates[0][2]}
    if len(activations) != 1:
        _fail(f"PaiNN with different activations in its networks {sorted(map(str, activations))}")
    model = PaiNN(numbers, cutoff=_cutoff(rep, ell), n_features=F, n_interactions=n, n_rbf=n_rbf,
                  activation=activations.pop(), rbf=basis, rbf_width=width,
                  epsilon=float(mixings[0].state.get("epsilon", 1e-8)))

    def split(x, order):  # reorder the three F-wide row blocks of a weight or bias
        parts = torch.split(x, F, dim=0)
        return torch.cat([parts[k] for k in order], dim=0)

    # SchNetPack splits messages (s, vs, vv) and gates (ss, vv, sv); ours (s, vv, vs) and (vv, sv, ss)
    message_order, gate_order = (0, 2, 1), (1, 2, 0)
    with torch.no_grad():
        model.embedding.weight.copy_(table[numbers])
        _set_radial(model.rbf, basis, centers)
        (w_f, b_f, act_f), = _dense(rep.child("filter_net"))
        if act_f is not None:
            _fail("PaiNN filter network with an activation")
        if w_f.shape[0] == 3 * F and n > 1:  # shared filters: one block used by every interaction
            w_f, b_f = w_f.repeat(n, 1), b_f.repeat(n)
        rescale = ell if basis == "bessel" else 1.0
        for t in range(n):
            rows = slice(3 * F * t, 3 * F * (t + 1))
            model.filters.weight[rows] = split(w_f[rows], message_order) * rescale
            model.filters.bias[rows] = split(b_f[rows], message_order)
            block = model.blocks[t]
            (w0, b0, _), (w1, b1, _) = _dense(interactions[t].child("interatomic_context_net"))
            _copy(block.context[0], w0, b0)
            _copy(block.context[2], split(w1, message_order), split(b1, message_order))
            (w_mix, b_mix, _), = _dense(mixings[t].child("mu_channel_mix"))
            _copy(block.mix, torch.cat([w_mix[F:], w_mix[:F]]), b_mix)
            (g0, c0, _), (g1, c1, _) = _dense(mixings[t].child("intraatomic_context_net"))
            _copy(block.gates[0], g0, c0)
            _copy(block.gates[2], split(g1, gate_order), split(c1, gate_order))
    return model


def _set_radial(rbf: torch.nn.Module, basis: str, values: torch.Tensor) -> None:
    target = rbf.centers if basis == "gaussian" else rbf.frequencies
    if target.shape != values.shape:
        raise Unsupported(f"radial basis of {values.numel()} functions does not fit {target.numel()}")
    target.copy_(values)


def _head(root: ModuleRecord):
    """(the Atomwise record, the Forces record or None, the energy key)."""
    heads = root.child("output_modules").children()
    forces = [m for m in heads if m.name == "Forces"]
    energy_key = forces[0].state.get("energy_key", "energy") if forces else "energy"
    atomwise = [m for m in heads if m.name == "Atomwise" and m.state.get("output_key") == energy_key]
    others = [m.class_name for m in heads if m.name not in ("Atomwise", "Forces")]
    if others:
        _fail(f"output modules {others} are not supported")
    if len(atomwise) != 1:
        _fail(f"the model has no Atomwise energy output (key {energy_key!r}); its outputs are "
              f"{[m.state.get('output_key', m.name) for m in heads]}")
    if len(heads) != len(atomwise) + len(forces):
        _fail("outputs besides the energy and its derivatives are not supported")
    head = atomwise[0]
    if head.state.get("aggregation_mode") != "sum":
        _fail(f"Atomwise aggregation {head.state.get('aggregation_mode')!r} (only 'sum' is an energy)")
    if head.state.get("n_out", 1) != 1:
        _fail(f"Atomwise with n_out={head.state.get('n_out')}")
    return head, (forces[0] if forces else None), energy_key


def _postprocessing(root: ModuleRecord, energy_key: str):
    """(a, b, t [max_z] or None, f) of E = a·Y + Σ(b + t[Z]), F = −f·∂Y/∂r, in model units."""
    a, b, t, f = 1.0, 0.0, None, 1.0
    posts = root.child("postprocessors")
    if root.state.get("do_postprocessing", True) is False or posts is None:
        return a, b, t, f
    for post in posts.children():
        name = post.name
        if name in ("CastTo64", "CastTo32", "CastMap"):
            continue
        if name == "AddOffsets":
            if post.state.get("_property") != energy_key:
                _fail(f"AddOffsets on {post.state.get('_property')!r} (only the energy)")
            if not post.state.get("is_extensive", True):
                _fail("AddOffsets with is_extensive=False")
            if post.state.get("add_mean"):
                b += float(post.tensor("mean").reshape(-1)[0])
            if post.state.get("add_atomrefs"):
                refs = post.tensor("atomref").double().reshape(-1)
                t = refs.clone() if t is None else t + refs
        elif name == "ScaleProperty":
            key, out = post.state.get("input_key"), post.state.get("output_key")
            scale = float(post.tensor("scale").reshape(-1)[0])
            if key != out:
                _fail(f"ScaleProperty from {key!r} to another key {out!r}")
            if key == energy_key:
                a, b = a * scale, b * scale
                t = None if t is None else t * scale
            elif key == "forces":
                f *= scale
            else:
                _fail(f"ScaleProperty on {key!r}")
        else:
            _fail(f"postprocessor {post.class_name} is not supported")
    return a, b, t, f


def convert(pickled: PickledModel, energy_unit: str = "kcal/mol", length_unit: str = "Å",
            species: list[int] | None = None) -> Potential:
    """Our potential computing what ``pickled`` computes, in eV and Å.

    Args:
        energy_unit, length_unit: the units the SchNetPack model was trained in.
        species: atomic numbers to cover; None: every element the embedding has a row for.

    Raises:
        ValueError: a model outside what is supported, saying what is.
    """
    eps, ell = energy_factor(energy_unit), length_factor(length_unit)  # eV per unit, Å per unit
    root = pickled.root
    if not isinstance(root, ModuleRecord) or root.name != "NeuralNetworkPotential":
        _fail(f"the file holds a {getattr(root, 'class_name', type(root).__name__)}, "
              "not a SchNetPack NeuralNetworkPotential")
    inputs = [m.name for m in (root.child("input_modules").children() if root.child("input_modules") else [])]
    if "PairwiseDistances" not in inputs or set(inputs) - {"PairwiseDistances", "Strain"}:
        _fail(f"input modules {inputs} (expected PairwiseDistances, optionally Strain)")
    head, forces, energy_key = _head(root)
    rep = root.child("representation")
    builders = {"SchNet": _schnet, "PaiNN": _painn}
    if rep is None or rep.name not in builders:
        _fail(f"representation {getattr(rep, 'class_name', rep)} is not supported")
    model = builders[rep.name](rep, sorted(set(species)) if species else None, ell)
    layers = _dense(head.child("outnet"))
    hidden = [w.shape[0] for w, _, _ in layers[:-1]]
    if hidden == [model.n_features // 2]:
        hidden = None  # our default, and the default of SchNetPack's build_mlp
    readout_activation = layers[0][2] if len(layers) > 1 else None
    options = {k: v for k, v in model.hyperparameters().items() if k != "species"}
    rebuilt = type(model)(model.atomic_numbers, **{**options, "readout_hidden": hidden,
                                                    "readout_activation": readout_activation
                                                    or type(model)._OPTIONS["readout_activation"]})
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("readout.")}
    with torch.no_grad():
        rebuilt.load_state_dict({**rebuilt.state_dict(), **state})
        _mlp_into(layers, rebuilt.readout, "Atomwise outnet")
    a, b, t, f = _postprocessing(root, energy_key)
    if forces is not None and not math.isclose(a, f, rel_tol=1e-12):
        _fail(f"the energy is scaled by {a} but the forces by {f}: they would not be −dE/dr")
    # the per-atom mean goes into the per-element table, not ``shift``: the table is a float64
    # vector that promotes a float32 network's output, while the 0-d shift would be rounded to
    # float32 with it (0.03 meV per atom for a mean of -470 eV)
    reference = {z: (b + (float(t[z]) if t is not None and z < t.numel() else 0.0)) * eps
                 for z in rebuilt.atomic_numbers}
    rebuilt.set_energy_reference(reference, scale=a * eps, shift=0.0)
    return rebuilt
