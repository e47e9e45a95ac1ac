"""diamusic: fine-tune the Dia codec language model on music and compare codebook delay patterns.

Words, each used for one thing only:

- *frame*: one codec time step (86.13 per second for DAC); a clip of T frames is a (T, codebooks) grid.
- *codebook*: one of the codec's token streams (DAC has 9); never "channel" or "level" in the API
  (transformers' Dia calls them channels, and the offline codec's codebooks are its RVQ levels).
- *delay pattern*: the shift, in frames, of each codebook; at least one codebook (the reference for
  a clip's length and EOS, the first with delay 0) is not delayed.
- *decode step*: one decoder position; a clip of T frames takes T + max delay + 1 decode steps.
- *optimizer step*: one parameter update (``steps`` in a config), made of ``grad_accum`` micro-batches.
- *clip*: one prepared piece of a source (at most ``max_seconds``); the *final* clip ends its source.
- *crop*: the frames of a clip used in one training or evaluation sample (``data.crop_frames`` at most).

Modules, in the one direction data flows (no module imports one to its right; tests/test_package.py
holds the exact order):
errors, stats, patterns, tokens -> the built-in music -> codecs, model, flops, metrics, tracking ->
data -> checkpoints, config -> teacher_forced, runs -> optim, generate -> trainer -> train, eval ->
ablate -> report -> cli.
The built-in music that ``data`` prepares: pitch, seeding -> corpus (melodies) -> synth, instruments,
harmony, captions -> arrangement -> playback -> render (``render_piece``).
A run: ``trainer`` sets it up (data, model, ``optim``, tracker, resumed state from ``checkpoints``),
``train`` runs the loop; ``teacher_forced`` is the one evaluation training and ``eval`` share.
Other words: a *demo* is the end-to-end command (``diamusic demo``); *samples* are the audio a run
writes at checkpoints from fixed prompts.
"""

__version__ = "0.1.0"
