"""Outside formats in: MIMIC-IV (and, as they come, FHIR R4 and HIS drug dictionaries)."""
