/* A binary module: Ansible passes the path of a JSON arguments file in
 * argv[1]. Compiled by tests/tests/playbooks.rs into a library dir. */
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        puts("{\"failed\": true, \"msg\": \"no arguments file\"}");
        return 1;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        puts("{\"failed\": true, \"msg\": \"cannot open the arguments file\"}");
        return 1;
    }
    fclose(f);
    puts("{\"changed\": false, \"style\": \"binary\"}");
    return 0;
}
