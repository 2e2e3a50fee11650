"""durable_rules 2.0.28's limits, measured on this project's machine, and the margins the compiler keeps."""

# Largest ruleset we build: durable_rules 2.0.28 breaks at 512 rules; we keep a margin. It
# counts alternatives, not rules: every branch of an `$or` is a rule path of its own, and a
# ruleset past ~512 paths crashes or hangs at registration (a custom `in` list of 506 values
# beside the global rules hung loading for ever). Rulesets are sharded by paths, and one rule
# may not exceed MAX_BRANCHES_PER_RULE.
MAX_RULES_PER_RULESET = 400
MAX_BRANCHES_PER_RULE = 300
MAX_IN_VALUES = 200
# durable_rules 2.0.28 fails (error 303) when more than 64 list tests pass for one fact.
MAX_LIST_TESTS_PER_FACT = 48

__all__ = ["MAX_BRANCHES_PER_RULE", "MAX_IN_VALUES", "MAX_LIST_TESTS_PER_FACT", "MAX_RULES_PER_RULESET"]
