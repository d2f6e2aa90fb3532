"""Prefill/decode disaggregation (DistServe, Splitwise; vLLM's kv_producer / kv_consumer behind a proxy).

A colocated engine runs prompts and decodes in the same steps: with chunked prefill every decode step
also carries a prompt chunk, so under prefill-heavy load the time per output token (TPOT) grows with
the prompts, and TTFT and TPOT cannot be tuned apart. Disaggregation gives each phase its own instance:

- ``workers``: a prefill worker (a ``BatchingEngine`` that runs the prompt, samples the first token and
  keeps the blocks until they are sent) and a decode worker (a ``BatchingEngine`` that admits the request
  with its prompt already computed, ``BatchingEngine.add_prefilled``, and decodes);
- ``kv_transfer``: the prompt's K/V from one paged cache into the other (shared memory / CUDA IPC);
- ``router``: ``DisaggregatedEngine``, the proxy (request -> prefill -> decode -> result), and
  ``generate_colocated``, the same offline API over one ``BatchingEngine`` (the baseline);
- ``bench``: a prefill-heavy Poisson workload through both: TTFT / TPOT percentiles, goodput under an
  SLO, KV transfer bandwidth, greedy equality (P4.6, P4.7).

The price: the KV bytes cross between instances, and each instance holds its own weights.
"""
