"""The assembled TitanInfer engine and the ``titaninfer`` command line.

``titaninfer generate`` runs phase 0's engine on the bundled model (offline, CPU is fine);
``titaninfer check <phase>`` runs a phase's targets. The full engine composing every phase's
solution (``LLMEngine``, ``chat``, ``serve``, ``bench``, ``report``) arrives with issue 11.
"""
