"""
The delivery job and the message it carries: L{message} reads and checks a
job (within the L{joblimits}) and builds its results; L{mime} turns a
C{mime} object into a message; L{headeredits} edits the header block;
L{dkimsign} signs it.
"""
