"""One run, from a Job to a run folder: the Job and its validation (:mod:`.job`), preparing a
case (:mod:`.case`: model, image, segmentation, target), the cost estimate and the
receptive-field crop (:mod:`.cost`, :mod:`.cropping`), the runner (:mod:`.runner`) and what it
refuses before any network pass (:mod:`.preflight`), the output
folder's rules (:mod:`.destination`) and contents (:mod:`.run_folder`), evaluation of the maps
(:mod:`.evaluation`), the HTML report (:mod:`.report`), the worker process front ends talk to
(:mod:`.worker`) and the Python API (:mod:`.api`).

May import: every package below it in the dependency rule (figures, metrics, methods, targets,
models, engine, io, schema, errors); never :mod:`TorchEsegetaLib.cohort` or
:mod:`TorchEsegetaLib.cli`.
"""
