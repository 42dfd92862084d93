; davi-batch.scm: Script-Fu helpers that drive the DAVI Restore plug-in (davi-gimp) from
; GIMP's batch mode or its Script-Fu console.
;
;   (davi-restore-file TASK IN OUT SEED [KNOBS…])      restore one file, write OUT (format
;                                                      from its name)
;   (davi-restore-files TASK PATTERN DIR SEED [KNOBS…]) every file matching PATTERN into DIR
;
; TASK is "deblur", "denoise", "sr4", "inpaint" or "colorize". For "inpaint" the centred half
; of the picture is selected and filled (a script that knows its region selects it instead).
; "sr4" writes a picture 4x the size of IN.
; KNOBS, optional, are the four extra parameters of the plug-in-davi-<task>-ex procedures:
; THREADS DEVICE PRECISION ENSEMBLE, e.g. 0 "auto" "fp32" 8 (0 = libtorch's threads; "auto",
; "cpu", "cuda", "cuda:N"; "fp32", "bf16", "fp16"; ensemble 1, 2, 4 or 8). Without them the
; menu procedures run with those knobs' defaults (0 "auto" "fp32" 1).
;
; Headless, with no display:
;   gimp-console-2.10 -i -d -f -n --batch-interpreter plug-in-script-fu-eval \
;     -b '(begin (load "host-example/gimp/davi-batch.scm")
;                (davi-restore-files "denoise" "photos/*.png" "restored" 0))' \
;     -b '(gimp-quit 0)'
; (davi-restore-files "denoise" "photos/*.png" "restored" 0 0 "auto" "fp32" 8) restores the
; same files with a self-ensemble of 8 (8 times the time, a little better).
; Load the file in the same -b command that uses it: each -b runs in a fresh interpreter.
; GIMP's exit status is 0 even when a batch command fails: look for "batch command executed
; successfully" in its output (docs/hosts/gimp.md).

; Runs the plug-in procedure of TASK on drawable L of IMG; returns the image holding the
; result (a new one for "sr4"). KNOBS: none (the menu procedure) or the four of its -ex
; procedure.
(define (davi-run-task task img l seed . knobs)
  (let ((run (lambda (proc proc-ex . params)
               (let ((args (cons RUN-NONINTERACTIVE (cons img (cons l params)))))
                 (if (null? knobs)
                     (apply proc args)
                     (apply proc-ex (append args knobs)))))))
    (cond
      ((equal? task "deblur") (run plug-in-davi-deblur plug-in-davi-deblur-ex seed -1 0) img)
      ((equal? task "denoise") (run plug-in-davi-denoise plug-in-davi-denoise-ex seed -1 0) img)
      ((equal? task "colorize")
        (run plug-in-davi-colorize plug-in-davi-colorize-ex seed -1 0) img)
      ((equal? task "sr4") (car (run plug-in-davi-sr4 plug-in-davi-sr4-ex seed -1 0 TRUE)))
      ((equal? task "inpaint")
        (let ((w (car (gimp-image-width img))) (h (car (gimp-image-height img))))
          (gimp-image-select-rectangle img CHANNEL-OP-REPLACE
            (quotient w 4) (quotient h 4) (quotient w 2) (quotient h 2))
          (run plug-in-davi-inpaint plug-in-davi-inpaint-ex seed -1 0)
          (gimp-selection-none img)
          img))
      (else (error (string-append "davi-batch: unknown task " task))))))

(define (davi-restore-file task in out seed . knobs)
  (let* ((img (car (gimp-file-load RUN-NONINTERACTIVE in in)))
         (l (car (gimp-image-get-active-drawable img)))
         (result (apply davi-run-task task img l seed knobs))
         (rl (car (gimp-image-get-active-drawable result))))
    (gimp-file-save RUN-NONINTERACTIVE result rl out out)
    (if (not (= result img)) (gimp-image-delete result))
    (gimp-image-delete img)
    out))

; The last path component of PATH.
(define (davi-basename path)
  (let loop ((i (- (string-length path) 1)))
    (cond ((< i 0) path)
          ((char=? (string-ref path i) #\/) (substring path (+ i 1) (string-length path)))
          (else (loop (- i 1))))))

(define (davi-restore-files task pattern dir seed . knobs)
  (let loop ((files (cadr (file-glob pattern 1))) (n 0))
    (if (null? files)
        n
        (begin
          (apply davi-restore-file task (car files)
                 (string-append dir "/" (davi-basename (car files))) seed knobs)
          (loop (cdr files) (+ n 1))))))
