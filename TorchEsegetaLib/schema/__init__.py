"""What a user may say, declared once: the published job schema (``job.schema.json``), the one
validator that checks every value against it (:mod:`.validation`), and the parameter
declarations shared by the method and metric registries (:mod:`.registry`), from which the CLI
flags, the Slicer panel's forms and the documentation are generated.

May import: :mod:`TorchEsegetaLib.errors` only (the bottom of the dependency rule in
``docs/architecture.md``).
"""
