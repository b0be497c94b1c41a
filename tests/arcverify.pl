#!/usr/bin/perl
# Verify the ARC chain (RFC 8617) of a message with Mail::DKIM's
# ARC::Verifier (Debian's libmail-dkim-perl), an implementation independent
# of dkimpy, asking the name server at 127.0.0.1:PORT for the public keys.
#
# usage: arcverify.pl PORT MESSAGE-FILE
# prints "arc RESULT" (pass, fail or none), then "detail TEXT" (spaces
# made underscores).
use strict;
use warnings;
use Mail::DKIM::ARC::Verifier;
use Net::DNS::Resolver;

my ($port, $path) = @ARGV;
die "usage: $0 PORT MESSAGE-FILE\n" unless defined $path;
open(my $message, '<:raw', $path) or die "cannot read $path: $!\n";
my $resolver = Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 0,
    udp_timeout => 5, tcp_timeout => 5, retry => 1,
);
Mail::DKIM::DNS::resolver($resolver);

my $arc = Mail::DKIM::ARC::Verifier->new();
while (my $line = <$message>) {
    $line =~ s/\r?\n\z/\r\n/;
    $arc->PRINT($line);
}
$arc->CLOSE;
print "arc ", $arc->result, "\n";
print "detail ", ($arc->result_detail =~ s/\s+/_/gr), "\n";
