"""
What an operator watches and steers while mqtwist runs: L{controls} holds
the pauses and cancels, L{api} serves them over HTTP with the dashboard's
files (in C{dashboard/}), and L{history} keeps the counts the dashboard
draws.
"""
