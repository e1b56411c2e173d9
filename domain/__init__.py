"""The shared vocabulary and configuration of both modes; imports nothing else of flashguard.

- `types`: subjects, keys, decisions, reasons, order states, journal records.
- `values`: bounds, ids, money, durations, ratios, text folding. `lists`: black- and whitelists.
- `config`: the entries and the live configuration. `document`: reading and validating a
  configuration document, every error with its location.
- `schema`: the HTTP request and response bodies, validated. `errors`: the API's errors.
- `messages`: what the buyer is told. `clock`: injected time.
"""
