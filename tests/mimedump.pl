#!/usr/bin/perl
# Parse a message with MIME::Parser (Debian's libmime-tools-perl), a parser
# independent of Python's email package, and print what it found as JSON:
# the decoded header fields of the top, and per leaf part its content type,
# charset, transfer encoding, file name and decoded body (base64).
#
# usage: mimedump.pl < message
use strict;
use warnings;
use JSON::PP;
use MIME::Parser;
use MIME::Base64;
use MIME::Words qw(decode_mimewords);
use Encode qw(decode);

sub decoded {
    my ($value) = @_;
    return undef unless defined $value;
    chomp $value;
    my $text = join '', map {
        my ($data, $charset) = @$_;
        $charset ? decode($charset, $data) : decode('ascii', $data);
    } decode_mimewords($value);
    $text =~ s/\r?\n[ \t]/ /g;    # unfold
    return $text;
}

my $parser = MIME::Parser->new;
$parser->output_to_core(1);
$parser->tmp_to_core(1);
binmode STDIN;
my $entity = $parser->parse(\*STDIN);
my $head = $entity->head;
my %headers;
foreach my $tag ($head->tags) {
    $headers{lc $tag} = [map { decoded($_) } $head->get_all($tag)];
}
my @parts;
my @structure;
sub walk {
    my ($e, $depth) = @_;
    push @structure, ('  ' x $depth) . $e->mime_type;
    if ($e->parts) {
        walk($_, $depth + 1) foreach $e->parts;
        return;
    }
    my $body = $e->bodyhandle ? $e->bodyhandle->as_string : '';
    push @parts, {
        type => $e->mime_type,
        charset => $e->head->mime_attr('content-type.charset'),
        encoding => $e->head->mime_encoding,
        filename => $e->head->recommended_filename,
        body => encode_base64($body, ''),
    };
}
walk($entity, 0);
print JSON::PP->new->utf8->canonical->encode({
    headers => \%headers, parts => \@parts, structure => \@structure,
});
