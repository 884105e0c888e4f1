"""The MD loop: integrate, check for blow-ups, hand snapshots to the observers at intervals.

Intervals count absolute steps (``step % interval == 0``), so a restarted
run records the same steps as an uninterrupted one. A system that blows up
(non-finite energy or forces, a temperature far beyond its target, atoms
flying apart or closer than ``validate.MIN_DISTANCE``, an NPT cell whose volume
or shape collapsed or exploded) is
stopped and named; its frames up to its last recorded step
stay, and the others run on. SIGINT/SIGTERM stop the run at the next step
boundary, after that step's outputs.
"""

from __future__ import annotations

import signal
import threading

import torch

from . import barostat
from .integrators import Integrator
from .state import MDState, max_radius, temperature
from .validate import MIN_DISTANCE
from .writers import Outputs, Progress, snapshot

#: blow-up reasons, by code
_REASONS = {1: "potential energy is not finite", 2: "forces are not finite", 3: "temperature", 4: "radius",
            5: "positions are not finite", 6: "volume", 7: "spacing", 8: "contact"}
#: steps between blow-up checks (also made at every step with outputs, so no bad frame is written);
#: a system that went non-finite in between gets no neighbors and harms no other
CHECK_INTERVAL = 10


class Simulation:
    """One run of a batch: the state, its force field and integrator, and the outputs."""

    def __init__(self, state: MDState, force_field, integrator: Integrator, settings, outputs: Outputs,
                 labels: list[str], progress: bool):
        self.state, self.force_field, self.integrator = state, force_field, integrator
        self.settings, self.outputs, self.labels = settings, outputs, labels
        self.status = {k: "running" for k in state.system_id.tolist()}
        self.messages: dict[int, str] = {}
        self.stop_signal: str | None = None
        self.compile_s: float | None = None  # seconds torch.compile took at the start, if it ran
        self._energies: list[tuple[int, torch.Tensor]] = []  # (step, [B] energy) since the last fold
        n_atoms = int(state.n_atoms.sum())
        self.progress = Progress(settings.steps, state.step, n_atoms) if progress else None

    # -- checks ------------------------------------------------------------------
    def _fold_nonfinite(self) -> None:
        """Note in ``first_nonfinite_step`` the first step since the last fold whose energy was not finite."""
        if not self._energies:
            return
        steps, energies = zip(*self._energies)
        self._energies.clear()
        bad = ~torch.isfinite(torch.stack(energies))  # [k, B]
        th = self.state.thermostat
        at = torch.tensor(steps, device=bad.device)[bad.long().argmax(0)]  # [B], the first bad row's step
        first = th["first_nonfinite_step"]
        th["first_nonfinite_step"] = torch.where((first < 0) & bad.any(0), at, first)

    def _blowup_codes(self) -> torch.Tensor:
        """[B] int: 0 fine, else a key of _REASONS."""
        self._fold_nonfinite()
        s = self.state
        codes = torch.zeros(s.n_systems, dtype=torch.long, device=s.device)
        bad_forces = torch.zeros(s.n_systems, dtype=torch.long, device=s.device).index_add_(
            0, s.system, (~torch.isfinite(s.forces).all(1)).long())
        hot = ~(temperature(s) <= s.thermostat["max_temperature"])  # NaN too
        codes = torch.where(hot, 3, codes)
        if "max_radius" in s.thermostat:
            codes = torch.where(self._radius() > s.thermostat["max_radius"], 4, codes)
        if "min_volume" in s.thermostat:  # NPT: the cell itself can blow up
            codes = torch.where(self._spacing_ratio() < 1.0, 7, codes)
            volume = barostat.volume(s.cell)
            codes = torch.where(~((volume >= s.thermostat["min_volume"]) & (volume <= s.thermostat["max_volume"])),
                                6, codes)
        # atoms driven into one another (a model far outside its training data): the overlap
        # that validate refuses at the start, found while running
        codes = torch.where(self.force_field.neighbors.closest(s) < MIN_DISTANCE, 8, codes)
        codes = torch.where(bad_forces > 0, 2, codes)
        bad_positions = torch.zeros_like(bad_forces).index_add_(
            0, s.system, (~torch.isfinite(s.positions).all(1)).long())
        codes = torch.where(bad_positions > 0, 5, codes)
        return torch.where(s.thermostat["first_nonfinite_step"] >= 0, 1, codes)

    def _radius(self) -> torch.Tensor:
        """[B] Å, largest distance of an atom from its system's centre of mass (molecules; 0 if periodic)."""
        radius = max_radius(self.state)
        return torch.where(self.state.pbc.any(1), torch.zeros_like(radius), radius)

    def _spacing_ratio(self) -> torch.Tensor:
        """[B] smallest lattice-plane spacing over its limit (below 1: the cell collapsed)."""
        return (barostat.plane_spacings(self.state.cell) / self.state.thermostat["min_spacing"]).amin(1)

    def _stop_systems(self, codes: torch.Tensor) -> None:
        s = self.state
        bad = torch.nonzero(codes).squeeze(1).tolist()
        temps = temperature(s).tolist()
        radius = self._radius().tolist() if 4 in codes.tolist() else None
        for b in bad:
            k = int(s.system_id[b])
            code = int(codes[b])
            if code == 3:
                limit = float(s.thermostat["max_temperature"][b])
                reason = f"temperature {temps[b]:.4g} K is far beyond the target (limit {limit:g} K)"
            elif code == 4:
                limit = float(s.thermostat["max_radius"][b])
                reason = (f"an atom is {radius[b]:.3g} Å from the centre of mass: atoms flew apart "
                          f"(limit {limit:.3g} Å)")
            elif code == 6:
                volume = float(barostat.volume(s.cell[b:b + 1])[0])
                low, high = float(s.thermostat["min_volume"][b]), float(s.thermostat["max_volume"][b])
                reason = (f"the cell volume {volume:.4g} Å³ left [V₀/8, 8 V₀] = [{low:.4g}, {high:.4g}] Å³: the cell "
                          f"{'collapsed' if volume < low else 'exploded' if volume > high else 'is not finite'}; "
                          "use a larger --taup-fs (a slower barostat) or check the target pressure and the model")
            elif code == 7:
                spacing = barostat.plane_spacings(s.cell[b:b + 1])[0].tolist()
                limit = s.thermostat["min_spacing"][b].tolist()
                reason = (f"the cell flattened: lattice-plane spacings {[round(x, 3) for x in spacing]} Å, below half "
                          f"the initial ones ({[round(x, 3) for x in limit]} Å); use a larger --taup-fs or "
                          "--cell-dof isotropic")
            elif code == 8:
                closest = float(self.force_field.neighbors.closest(s)[b])
                reason = (f"two atoms are {closest:.3g} Å apart (closer than {MIN_DISTANCE} Å): they ran into one "
                          "another, as a model does outside its training data (check the structure, "
                          "temperature and pressure against what the model was trained on)")
            else:
                reason = _REASONS[code]
            step = s.step
            if code == 1:
                step = int(s.thermostat["first_nonfinite_step"][b])
                reason += f" (found at the check of step {s.step})" if step != s.step else ""
            last = self.outputs.last_recorded.get(k)
            where = f"{self.labels[k]}: " if len(self.status) > 1 else ""
            self.messages[k] = (f"{where}simulation blew up at step {step}: {reason}; kept the frames up "
                                f"to step {last}")
            self.status[k] = "blew-up"
            self.outputs.h5.set_system_attrs(k, status="blew-up", message=self.messages[k],
                                             last_step=int(s.step))
            self.outputs.note(f"blew-up: {self.messages[k]}")
        keep = torch.nonzero(codes == 0).squeeze(1)
        self.state = s.select(keep)
        self.force_field.neighbors.select(keep)  # the others keep their lists
        if self.state.n_systems:
            self.outputs.h5.flush(self.checkpoint())

    # -- the loop ------------------------------------------------------------------
    def checkpoint(self) -> dict:
        self._fold_nonfinite()
        s = self.state
        state = {"step": s.step, "systems": s.system_id.cpu().numpy(), "positions": s.positions.cpu().numpy(),
                 "momenta": s.momenta.cpu().numpy(),
                 "thermostat": {k: v.cpu().numpy() for k, v in s.thermostat.items() if not k.startswith("noise_")}}
        if "min_volume" in s.thermostat:  # NPT: the cell is part of the state
            state["cell"] = s.cell.cpu().numpy()
        return state

    def _due(self, step: int) -> tuple[bool, bool, bool, bool]:
        st = self.settings
        return (step % st.h5_interval == 0, st.traj_interval > 0 and step % st.traj_interval == 0,
                step % st.log_interval == 0,
                self.progress is not None and step % max(1, min(10, st.steps // 100 or 1)) == 0)

    def observe(self) -> None:
        """Outputs due at the current step."""
        step = self.state.step
        due_h5, due_traj, due_log, due_draw = self._due(step)
        if not (due_h5 or due_traj or due_log or due_draw):
            return
        host = snapshot(self.state)
        # .traj and log first, the HDF5 checkpoint last: a run killed in between restarts from
        # the previous checkpoint and drops what came after it, so no frame is ever missing
        if due_traj:
            self.outputs.write_traj(host)
        if due_log:
            self.outputs.log_line(host)
        if due_h5:
            self.outputs.record(host)
            if self.outputs.h5.due():
                self.outputs.h5.flush(self.checkpoint())
        if due_draw:
            single = len(host["energy"]) == 1 and len(self.status) == 1
            self.progress.draw(step, host["temperature"],
                               float(host["energy"][0] + host["kinetic"][0]) if single else None)

    def run(self) -> tuple[str, str]:
        """Run to ``settings.steps``; returns (status, message) of the run as a whole."""
        steps = self.settings.steps
        while self.state.step < steps:
            self.integrator(self.state, self.force_field)
            step = self.state.step
            # the energies since the last check, so that a check names the step they first went
            # non-finite (kept as they are: no operation per step)
            self._energies.append((step, self.state.energy))
            if step % CHECK_INTERVAL == 0 or step == steps or any(self._due(step)):
                codes = self._blowup_codes()
                if bool(codes.any()):
                    self._stop_systems(codes)
                    if not self.state.n_systems:
                        break
            self.observe()
            if self.stop_signal is not None:
                return "interrupted", (f"stopped by {self.stop_signal} at step {self.state.step}; "
                                       "files closed cleanly")
        if self.state.n_systems:
            for k in self.state.system_id.tolist():
                self.status[k] = "completed"
        failed = [k for k, v in self.status.items() if v == "blew-up"]
        if failed and not self.state.n_systems:
            return "blew-up", "; ".join(self.messages[k] for k in failed)
        if failed:
            return "completed", (f"completed {steps} steps; {len(failed)} of {len(self.status)} systems blew up: "
                                 + "; ".join(self.messages[k] for k in failed))
        return "completed", f"completed {steps} steps"

    def close(self, status: str) -> None:
        # after a crash the current state is not trustworthy: keep the previous checkpoint
        consistent = status in ("completed", "interrupted") and self.state.n_systems > 0
        h5 = self.outputs.h5
        try:
            for k, v in self.status.items():
                if v != "blew-up":
                    h5.set_system_attrs(k, status=status if v == "running" else v, last_step=int(self.state.step))
            h5.set_attrs(status=status, last_step=int(self.state.step))
            self.outputs.close(self.checkpoint() if consistent else None)
        finally:
            if self.progress is not None:
                self.progress.finish()


def with_signals(sim: Simulation, handle_signals: bool) -> dict:
    """Install SIGINT/SIGTERM handlers that stop the run at the next step boundary."""
    if not handle_signals or threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if sim.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        sim.stop_signal = name

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous

