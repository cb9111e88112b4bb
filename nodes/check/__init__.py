"""Checks that end a workflow: did the likeness hold? (Identity Score for faces, Subject Score for anything else.)"""
