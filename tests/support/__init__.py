"""Helpers shared by test files (not collected: no file here is named test_*)."""
