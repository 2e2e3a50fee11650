"""Compatibility: the drug dictionary moved to :mod:`rx_audit.rulebook.dictionary`."""

from rx_audit.rulebook.dictionary import Dictionary, DictionaryEntry, _main, load_dictionary  # noqa: F401

if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
