#!/usr/bin/perl
# Verify the DKIM signatures of a message with Mail::DKIM (Debian's
# libmail-dkim-perl), an implementation independent of dkimpy, asking the
# name server at 127.0.0.1:PORT for the public keys.
#
# usage: dkimverify.pl PORT MESSAGE-FILE
# prints one line per signature: "result domain selector algorithm detail",
# then "overall RESULT".
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my ($port, $path) = @ARGV;
die "usage: $0 PORT MESSAGE-FILE\n" unless defined $path;
open(my $message, '<:raw', $path) or die "cannot read $path: $!\n";
my $resolver = Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 0,
    udp_timeout => 5, tcp_timeout => 5, retry => 1,
);
Mail::DKIM::DNS::resolver($resolver);

my $dkim = Mail::DKIM::Verifier->new();
while (my $line = <$message>) {
    $line =~ s/\r?\n\z/\r\n/;
    $dkim->PRINT($line);
}
$dkim->CLOSE;
foreach my $signature ($dkim->signatures) {
    printf "%s %s %s %s %s\n", $signature->result, $signature->domain,
        $signature->selector, $signature->algorithm,
        ($signature->result_detail =~ s/\s+/_/gr);
}
print "overall ", $dkim->result, "\n";
