"""RHEL through SCPI instruments: a waveform generator drives the board, a digitizer reads it (PyVISA).

``Instruments(awg, digitizer)`` opens both resources with pyvisa-py (``TCPIP::host::port::SOCKET``),
identifies them (``*IDN?``) and sets little-endian blocks (``FORMat:BORDer SWAPped``). Every command is
followed by ``SYSTem:ERRor?``: an instrument that reports an error, answers in ASCII where a block is
expected, or does not answer within ``timeout`` fails the call with one line (``InstrumentError``, a
ValueError) naming the resource and the command.

``InstrumentCore(board, instruments, config)`` is the analog twin's host half (twin.AnalogCore) on
those instruments: loading a bank sends its tuning codes (``TUNE:BANK``, ``TUNE:CODes``), a forward
uploads the forcing DAC codes, runs from rest and reads both channels; each echo of RHEL's ±ε pair is
one more run (``SOURce:MODE ECHO``, from the state the forward ended in, velocity flipped) with the
nudges as velocity kicks. The host computes the observables from the digitized readouts exactly as
the in-process twin does, so with the same board file and seeds the gradients are bit for bit those
of ``twin.AnalogTwin``. The instruments run whole sequences: a forward starts from rest, an echo from
the forward that just ran.
"""

from __future__ import annotations

import numpy as np
import pyvisa
from pyvisa import constants

from echoforge.targets.emulator.fixed import FormatConfig

from .board import Board
from .calibration_file import Calibration
from .mapping import QUANTITIES, BankMapping
from .twin import AnalogCore

DEFAULT_TIMEOUT = 10.0
MODELS = {"awg": "ANALOG-TWIN-AWG", "digitizer": "ANALOG-TWIN-DIGITIZER"}


class InstrumentError(ValueError):
    """An instrument failed a call: it reported an error, answered the wrong way, or not at all."""


class Session:
    """One SCPI instrument through PyVISA: commands checked against its error queue, blocks both ways."""

    def __init__(self, manager: pyvisa.ResourceManager, resource: str, timeout: float):
        self.resource = resource
        self.timeout = timeout
        try:
            self.handle = manager.open_resource(resource, read_termination="\n", write_termination="\n",
                                                timeout=int(timeout * 1000), open_timeout=int(timeout * 1000))
        except Exception as error:  # pyvisa-py raises bare exceptions on connect  # noqa: BLE001
            raise InstrumentError(f"{resource}: cannot open the instrument ({error}) — is it served there?") from None

    def close(self) -> None:
        self.handle.close()

    def query(self, text: str) -> str:
        return self._io(text, lambda: self.handle.query(text)).strip()

    def write(self, text: str) -> None:
        """Send a command, then ask the error queue: an error there fails the call."""
        self._io(text, lambda: self.handle.write(text))
        self.check(text)

    def write_block(self, header: str, values, datatype: str) -> None:
        self._io(header, lambda: self.handle.write_binary_values(f"{header} ", np.ravel(values), datatype=datatype,
                                                                 is_big_endian=False))
        self.check(header)

    def read_block(self, query: str, datatype: str) -> np.ndarray:
        def read():
            try:
                return self.handle.query_binary_values(query, datatype=datatype, is_big_endian=False,
                                                       container=np.array)
            except ValueError as error:  # pyvisa: "Could not find hash sign (#)..." — an ASCII reply
                self._drain()
                raise InstrumentError(f"{self.resource}: {query} answered without a definite-length block "
                                      f"({' '.join(str(error).split())[:120]}) — is this the digitizer, and "
                                      "did a run capture?") from None
        return self._io(query, read)

    def check(self, after: str) -> None:
        reply = self._io("SYSTem:ERRor?", lambda: self.handle.query("SYSTem:ERRor?")).strip()
        code, _, message = reply.partition(",")
        try:
            failed = int(code) != 0
        except ValueError:
            raise InstrumentError(f"{self.resource}: SYSTem:ERRor? answered {reply[:80]!r}, not 'code,\"message\"' "
                                  f"— not a SCPI instrument?") from None
        if failed:
            raise InstrumentError(f"{self.resource}: {after.split()[0]} failed: error {code} {message.strip(chr(34))}")

    def _io(self, what: str, call):
        try:
            return call()
        except pyvisa.VisaIOError as error:
            if error.error_code == constants.StatusCode.error_timeout:
                raise InstrumentError(f"{self.resource}: no answer to {what.split()[0]} within {self.timeout:g} s — "
                                      "check that the instrument is on and not hung") from None
            raise InstrumentError(f"{self.resource}: {what.split()[0]}: {error.description}") from None
        except (OSError, ConnectionError) as error:
            raise InstrumentError(f"{self.resource}: {what.split()[0]}: connection lost ({error})") from None

    def _drain(self) -> None:
        """Discard what is left of a reply that was not what we asked for."""
        try:
            self.handle.timeout = 50
            while self.handle.read_raw():
                pass
        except pyvisa.VisaIOError:
            pass
        finally:
            self.handle.timeout = int(self.timeout * 1000)


class Instruments:
    """The waveform generator and the digitizer of one board, identified and configured."""

    def __init__(self, awg: str, digitizer: str, *, timeout: float = DEFAULT_TIMEOUT):
        self.manager = pyvisa.ResourceManager("@py")
        self.sessions: dict[str, Session] = {}
        try:
            for role, resource in (("awg", awg), ("digitizer", digitizer)):
                session = self.sessions[role] = Session(self.manager, resource, timeout)
                identity = session.query("*IDN?")
                if MODELS[role] not in identity.split(","):
                    raise InstrumentError(f"{resource}: identifies as {identity[:80]!r}, not an echoforge "
                                          f"{MODELS[role]} — give the {'waveform generator' if role == 'awg' else 'digitizer'}")
                session.write("*CLS")
                session.write("FORMat:BORDer SWAPped")
        except BaseException:
            self.close()
            raise
        self.board_id = identity.split(",")[2]

    @property
    def awg(self) -> Session:
        return self.sessions["awg"]

    @property
    def digitizer(self) -> Session:
        return self.sessions["digitizer"]

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def run(self, dac_codes: np.ndarray, kick: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
        """One run: DAC codes (B, K, P), velocity kicks (an echo) or None (a forward from rest); returns
        the ADC codes of the position and quadrature channels (B, K, P) and how many samples clipped."""
        awg, digitizer = self.awg, self.digitizer
        batch, points, _ = dac_codes.shape
        awg.write(f"SOURce:SHAPe {batch},{points}")
        awg.write_block("SOURce:DATA", dac_codes, "i")
        if kick is not None:
            awg.write_block("SOURce:KICK", kick, "d")
        awg.write(f"SOURce:MODE {'ECHO' if kick is not None else 'FORWard'};:INITiate")
        awg.query("*OPC?")
        channels = []
        for source in ("POSition", "QUADrature"):
            digitizer.write(f"WAVeform:SOURce {source}")
            channels.append(digitizer.read_block("WAVeform:DATA?", "i").reshape(dac_codes.shape))
        clipped = int(digitizer.query("WAVeform:PREamble?").split(",")[-1])
        return channels[0], channels[1], clipped


class InstrumentCore(AnalogCore):
    """The HamiltonianCore contract through the instrument pair (module docstring)."""

    def __init__(self, board: Board, instruments: Instruments, config: FormatConfig | None = None, *,
                 calibration: Calibration | None = None, first_oscillator: int = 0, echo_compensation: bool = False):
        if instruments.board_id != board.id:
            raise InstrumentError(f"{instruments.awg.resource}: the instruments drive board {instruments.board_id!r}, "
                                  f"not {board.id!r} ({board.source}) — give the board file of that board")
        super().__init__(board, config, calibration=calibration, first_oscillator=first_oscillator,
                         echo_compensation=echo_compensation)
        self.instruments = instruments
        self._running = False

    def _program(self, mapping: BankMapping) -> None:
        awg = self.instruments.awg
        awg.write(f"TUNE:BANK {mapping.first},{mapping.size}")
        awg.write_block("TUNE:CODes", np.stack([mapping.codes[name] for name in QUANTITIES]), "i")

    def _set_gain(self, rate) -> None:
        if rate is not None and not self.board.echo_gain.available:
            raise ValueError(f"{self.board.source}: echo_gain.available is false: board {self.board.id!r} cannot "
                             "apply gain in its echo — use a board with a negative-resistance echo mode")
        rates = np.zeros(self.params.size) if rate is None else np.broadcast_to(rate, (self.params.size,))
        self.instruments.awg.write_block("SOURce:GAIN", rates, "d")

    def _begin(self, phi, pi, from_forward_end: bool) -> None:
        if phi.shape[1] == 1 and (phi.any() or pi.any()):
            raise ValueError("the instruments start a forward from rest: pass a zero start state")
        if phi.shape[1] == 2 and not from_forward_end:
            raise ValueError("the instruments start an echo from the forward that just ran: pass its end state")
        self._running = False

    def _advance(self, dac, kick, echo: bool):
        if self._running:
            raise ValueError("the instruments run whole sequences: give the pass one chunk")
        self._running = True
        runs = [self.instruments.run(dac[:, :, e], None if kick is None else kick[:, :, e])
                for e in range(dac.shape[2])]
        adc_x = np.stack([np.moveaxis(x, 1, 0) for x, _, _ in runs], axis=2)   # (K, B, E, P)
        adc_q = np.stack([np.moveaxis(q, 1, 0) for _, q, _ in runs], axis=2)
        return adc_x, adc_q, sum(clipped for _, _, clipped in runs)

    def _end_codes(self, phi_read, pi_read):
        """The end state as read out (the instruments do not expose the oscillators' state)."""
        phi, clamped_phi = self.config.state.quantize(phi_read)
        pi, clamped_pi = self.config.state.quantize(pi_read)
        return phi, pi, clamped_phi + clamped_pi

