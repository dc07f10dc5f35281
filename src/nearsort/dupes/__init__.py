"""dupes"""
