"""
One delivery attempt: L{engine} runs it; L{routing} finds the servers of a
recipient (MX or smarthost); L{policy} decides whether a destination may be
tried now (throttles, pauses, backoff) and L{deferrallog} reports the
deferrals it makes; L{transaction} sends one message over an SMTP
connection, the data plugins included.
"""
